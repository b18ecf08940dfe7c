"""A job queued where no worker listens is not an error, but every command says so, with the
command that fixes it: enqueue, status (text and JSON), watch, and wait when it times out."""

from __future__ import annotations

import json

from distillq.app.view import EXIT_TIMEOUT
from tests.conftest import run_cli

TEACHER = (
    "no worker is listening on queue teacher (0 nodes registered): start one with "
    "`distillq worker` or `distillq up`"
)
STUDENT = TEACHER.replace("queue teacher", "queue student")


def test_a_job_queued_to_no_one_says_so_in_every_command(settings, make_spec):
    res = run_cli(settings, "enqueue", str(make_spec(n_records=20, shards=1)))
    assert res.returncode == 0, res.stderr
    assert TEACHER in res.stderr and STUDENT in res.stderr
    job_id = res.stdout.strip().splitlines()[-1]

    status = run_cli(settings, "status", job_id)
    assert status.returncode == 0 and TEACHER in status.stdout
    as_json = json.loads(run_cli(settings, "status", job_id, "--json").stdout)
    assert as_json["state"] == "queued" and as_json["unheard"] == [TEACHER, STUDENT]
    watch = run_cli(settings, "watch", job_id, "--timeout", "1", "--interval", "0.2")
    assert watch.returncode == EXIT_TIMEOUT and TEACHER in watch.stdout
    wait = run_cli(settings, "wait", job_id, "--timeout", "1", "--interval", "0.2")
    assert wait.returncode == EXIT_TIMEOUT
    assert "not done after 1 s" in wait.stderr and TEACHER in wait.stderr


def test_a_queue_with_a_live_node_is_not_named(settings, make_spec):
    from distillq.core.runtime import broker
    from distillq.workers.node import Heartbeat, node_info

    r = broker.client(settings.broker_url, settings.sentinel_master)
    beat = Heartbeat(r, node_info("t@test", ["teacher"], 1), interval=5)
    beat.beat()  # registered as a worker registers itself
    beat.start()  # and alive as long as enqueue takes, however busy the machine
    try:
        res = run_cli(settings, "enqueue", str(make_spec(n_records=20, shards=1)))
        assert res.returncode == 0, res.stderr
        assert "queue teacher" not in res.stderr
        assert STUDENT.replace("(0 nodes", "(1 nodes") in res.stderr
    finally:
        beat.stop()


def test_a_node_cut_off_from_its_broker_says_so_once_a_minute(caplog):
    import logging
    import time

    import redis

    from distillq.workers.node import Heartbeat, node_info

    gone = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    beat = Heartbeat(gone, node_info("cut@test", ["teacher"], 1), interval=1)
    with caplog.at_level(logging.WARNING, logger="distillq.workers.node"):
        beat.start()
        deadline = time.time() + 30
        while beat._thread.is_alive() and time.time() < deadline and len(caplog.records) < 1:
            time.sleep(0.1)
        time.sleep(3.5)  # three more failed beats, well inside the minute
        beat._stop.set()
    said = [r.getMessage() for r in caplog.records if "broker unreachable" in r.getMessage()]
    assert len(said) == 1, said
    assert "cut@test" in said[0] and "(retrying)" in said[0]
