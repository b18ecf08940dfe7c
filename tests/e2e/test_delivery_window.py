"""Redis stopped at each step of a delivery: taken off the queue, received, replied, acked.

Issue 14a: a teacher received shard 1 about 15 ms before Redis stopped, its delivery was
known to no recovery path, and the job hung for the visibility timeout. Here a failpoint
holds a worker at each step in turn (``pause``), the test stops Redis there, lets the worker
go on against no Redis, and starts Redis again: eight outages in one job, on both queues.
Every job must complete with each shard and round landing once, and at most one task redone
per outage.
"""

from __future__ import annotations

import time
from pathlib import Path

from distillq.core.control.status import job_status
from distillq.core.job.jobs import load_job
from distillq.core.runtime import broker, live
from distillq.core.runtime.settings import Settings
from tests.conftest import Workers, failpoints
from tests.e2e.test_faults import all_logs, assert_landed_once, own_redis  # noqa: F401
from tests.e2e.test_pipeline import enqueue

STEPS = ("deliver", "received", "reply", "ack")
TASKS = ("distillq.teacher_shard", "distillq.train_replica")
POINTS = [f"{step}:{task}" for task in TASKS for step in STEPS]
STALL = 240.0  # seconds without a new outage or a new file before the test gives up


def storage_files(root: Path) -> int:
    return sum(1 for _ in root.rglob("*")) if root.exists() else 0


def test_redis_outage_at_every_step_of_a_delivery_loses_no_task(own_redis, tmp_path, make_spec):  # noqa: F811
    drill = tmp_path / "drill"
    s = Settings(broker_url=own_redis.url, storage=tmp_path / "storage", heartbeat_seconds=1)
    env = failpoints(drill, *(f"{p}=pause" for p in POINTS))
    w = Workers(s, tmp_path / "logs")
    try:
        w.start_both(extra_env=env)
        job_id = enqueue(s, make_spec(n_records=120, shards=3))
        job = load_job(s.storage, job_id)
        outages, last_seen, moved_at = 0, (-1, -1), time.monotonic()
        while True:
            held = list(drill.glob("*.paused"))
            if held:
                own_redis.stop()  # with AOF: queues, unacked messages and chords survive
                for h in held:
                    h.unlink()  # the worker goes on against no Redis
                time.sleep(2)
                own_redis.start()
                outages += 1
            elif (state := job_status(job).state) in ("done", "failed"):
                assert state == "done", all_logs(w)[-4000:]
                break
            seen = (outages, storage_files(s.storage))
            if seen != last_seen:
                last_seen, moved_at = seen, time.monotonic()
            assert time.monotonic() - moved_at < STALL, (
                f"nothing moved for {STALL:.0f} s after {outages} outage(s); fired: "
                f"{sorted(p.name for p in drill.iterdir())}\n{all_logs(w)[-4000:]}"
            )
            time.sleep(0.1)
        fired = {p.name for p in drill.iterdir()}
        assert fired >= set(POINTS), set(POINTS) - fired
        assert_landed_once(job)
        redone = {
            task: n - 1
            for task, n in live.attempts(
                broker.client(s.broker_url, s.sentinel_master), job_id
            ).items()
        }
        assert sum(redone.values()) <= outages, redone
    finally:
        w.stop_all()
