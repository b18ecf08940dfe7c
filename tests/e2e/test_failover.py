"""Redis Sentinel on real processes: a primary, a replica and three sentinels; two workers
through ``sentinel://`` URLs. The primary is SIGKILLed twice in one job: while a teacher shard
runs, and while a merge holds its track lock. The job ends with every shard verified and
every round merged exactly once, and `status` said meanwhile that the broker was failing over.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from distillq.core.job.jobs import load_job
from distillq.core.runtime.settings import Settings
from distillq.workers.redis_ha import MASTER, RedisHA
from tests.conftest import Workers, failpoints, run_cli
from tests.e2e.test_faults import all_logs, assert_landed_once
from tests.e2e.test_pipeline import enqueue
from tests.progress import wait_for


@pytest.fixture
def ha(tmp_path: Path) -> Iterator[RedisHA]:
    h = RedisHA(tmp_path / "ha").start()
    yield h
    h.stop()


def fail_over(
    ha: RedisHA, s: Settings, job_id: str, held: Path, lose_until: Path | None = None
) -> tuple[float, list[str]]:
    """Kill the primary while a task waits at ``held``; return the seconds until a replica
    took writes, and what `status` said meanwhile. With ``lose_until``, replication is cut
    first and the task let go until it waits at that second point: what it wrote to Redis
    meanwhile (a round's chord, counters) dies with the primary."""
    wait_for(held.exists, 180, f"a task to reach {held.name}")
    if lose_until is not None:
        ha.cut_replication()
        held.unlink()
        held = lose_until
        wait_for(held.exists, 180, f"a task to reach {held.name}")
    killed_at = time.monotonic()
    dead = ha.kill_primary()
    said = []
    while "failing over" not in "".join(said) and time.monotonic() - killed_at < 30:
        said.append(run_cli(s, "status", job_id).stdout)
    ha.wait_promoted(dead)
    took = time.monotonic() - killed_at
    held.unlink()  # the task goes on, talking to the new primary
    ha.rejoin(dead)  # back as a replica: the next failover has somewhere to go
    return took, said


def test_a_job_completes_across_two_primary_failovers(ha, tmp_path, make_spec):
    s = Settings(
        broker_url=ha.url,
        sentinel_master=MASTER,
        storage=tmp_path / "storage",
        heartbeat_seconds=1,
    )
    once = tmp_path / "failpoints"
    env = failpoints(once, "teacher_shard:1=pause", "merge:s=pause", "advanced:s:1=pause")
    w = Workers(s, tmp_path / "logs")
    try:
        w.start_both(extra_env=env)
        job_id = enqueue(s, make_spec(n_records=90, shards=3))
        job = load_job(s.storage, job_id)
        took_teacher, said = fail_over(ha, s, job_id, once / "teacher_shard:1.paused")
        assert any("broker: the broker is failing over" in out for out in said), said
        # The first merge publishes v1 and queues the next round, whose chord dies with the
        # primary; no redelivery brings it back (the round's marker says it is queued): the
        # reconcile after the failover does.
        took_merge, _ = fail_over(
            ha, s, job_id, once / "merge:s.paused", once / "advanced:s:1.paused"
        )
        res = run_cli(s, "wait", job_id, "--stall", "180")
        assert res.returncode == 0, res.stderr + all_logs(w)[-4000:]
        assert_landed_once(job)
        assert "work queued again in 1 job(s)" in all_logs(w)
        print(
            f"failover: a replica took writes {took_teacher:.1f} s and {took_merge:.1f} s "
            "after the primary's death"
        )
    finally:
        w.stop_all()


def test_a_wrong_master_name_or_dead_sentinels_get_one_line_with_the_fix(ha, tmp_path):
    s = Settings(broker_url=ha.url, sentinel_master="nope", storage=tmp_path / "storage")
    res = run_cli(s, "nodes")
    assert res.returncode != 0
    assert "monitor no primary named 'nope'; fix DISTILLQ_SENTINEL_MASTER" in res.stderr
    ha.stop()
    res = run_cli(s.with_(sentinel_master=MASTER), "nodes")
    assert res.returncode != 0 and "no sentinel of sentinels" in res.stderr, res.stderr


def test_a_command_sent_while_the_primary_is_dead_lands_on_the_promoted_replica(ha):
    """The command's retries must follow the failover, also when the dead primary comes back
    as a replica at its old address while they run (redis-py retried there until it gave up:
    "The previous master is now a slave")."""
    import threading

    from distillq.core.runtime import broker

    r = broker.client(ha.url, MASTER)
    r.set("n", 1)
    dead = ha.kill_primary()
    outcome: list[object] = []
    sent = threading.Thread(target=lambda: outcome.append(_try(lambda: r.incr("n"))))
    sent.start()  # retries against the dead address until the sentinels promote the replica
    ha.wait_promoted(dead)
    ha.rejoin(dead)  # the old address answers again, as a read-only replica
    sent.join(120)
    assert outcome and not isinstance(outcome[0], Exception), outcome
    assert int(r.get("n")) == outcome[0]


def _try(call):
    try:
        return call()
    except Exception as e:  # the outcome, for the assertion to show
        return e
