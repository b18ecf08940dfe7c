"""A mixed cluster works as one: a worker drains its queues in its -Q order, and work goes
only to nodes that can load its models."""

from __future__ import annotations

import time

import pytest
import yaml

from core import broker
from core.job import load_job
from storage import cache, checkpoints
from tests.conftest import run_cli
from tests.e2e.test_pipeline import enqueue

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def _until(what: str, check, progress, stall: float = 120.0) -> None:
    """Wait for ``check()``; fail only when ``progress()`` has not changed for ``stall`` s."""
    last, moved = progress(), time.time()
    while not check():
        now = progress()
        if now != last:
            last, moved = now, time.time()
        assert time.time() - moved < stall, f"no progress for {stall:.0f} s waiting for {what}"
        time.sleep(0.3)


@pytest.mark.parametrize("order", ["teacher,student", "student,teacher"])
def test_a_worker_drains_its_queues_in_its_own_order(order, settings, make_spec, workers):
    r = broker.client(settings.broker_url)
    track = {"peft": {"method": "lora", "r": 4}, "batch_size": 8, "replicas": 2}
    student_model = yaml.safe_load(make_spec().read_text())["students"][0]["model"]
    two_tracks = [{"name": n, "model": student_model, **track} for n in ("a", "b")]

    # Job 1: its shards done by a teacher-only worker, so its student tasks wait in `student`.
    teacher_only = workers.start("teacher", "teacher-only")
    first = load_job(settings.storage, enqueue(settings, make_spec(students=two_tracks)))
    _until(
        "job 1's teacher work",
        lambda: (
            all(first.paths.shard_stats(i).exists() for i in range(first.n_shards))
            and first.paths.teacher_eval.exists()
            and r.llen("student") == 4
        ),  # two tracks, two replicas each: every first round queued
        lambda: sum(first.paths.shard_stats(i).exists() for i in range(first.n_shards)),
    )
    from workers.launch import stop_process_group

    stop_process_group(teacher_only)
    # Job 2: nobody listens to `teacher` now, so all its teacher tasks wait there.
    second = load_job(settings.storage, enqueue(settings, make_spec()))
    assert r.llen("teacher") == second.n_shards + 1  # its shards and its teacher eval

    workers.start(order, "both")
    for job in (first, second):
        res = run_cli(settings, "wait", job.id, "--timeout", "900")
        assert res.returncode == 0, res.stderr + workers.log("both")

    shard_starts = [
        cache.read_stats(second.paths.shard_stats(i)).started_at for i in range(second.n_shards)
    ]
    first_round = [checkpoints.latest(first.paths, t).meta.rounds[0].replicas for t in ("a", "b")]
    replica_starts = [rep.started_at for reps in first_round for rep in reps]
    assert len(replica_starts) == 4
    if order == "teacher,student":
        assert max(shard_starts) < min(replica_starts)  # every teacher task before any student task
    else:
        assert max(replica_starts) < min(shard_starts)  # the queued student work first
