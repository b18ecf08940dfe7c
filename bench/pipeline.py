"""Pipeline overlap, teacher scaling over worker processes, and per-round Celery overhead."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.cluster import Cluster
from bench.efficiency import spec
from distillq.storage import checkpoints
from distillq.storage.atomic import read_json


def _shards_done(job: Any) -> bool:
    return all(job.paths.shard_stats(i).exists() for i in range(job.n_shards))


def overlap(root: Path, cluster: Cluster, records: int = 480, shards: int = 4) -> dict[str, Any]:
    """Whole job with both workers running vs the two stages one after the other."""
    together = cluster.job(spec(root, records, shards, "overlap-together"))
    cluster.worker("teacher", "teacher")
    cluster.worker("student", "student")
    cluster.submit(together)
    wall_together = cluster.wait_done(together)
    cluster.stop("student")

    staged = cluster.job(spec(root, records, shards, "overlap-staged"))
    t = time.time()
    cluster.submit(staged)
    while not _shards_done(staged):
        time.sleep(0.2)
    teacher_stage = time.time() - t
    cluster.stop("teacher")
    cluster.worker("student", "student")
    student_stage = cluster.wait_done(staged)
    cluster.stop("student")
    report = read_json(together.paths.report)
    return {
        "together_s": round(wall_together, 1),
        "teacher_stage_s": round(teacher_stage, 1),
        "student_stage_s": round(student_stage, 1),
        "sequential_sum_s": round(teacher_stage + student_stage, 1),
        "ratio": round(wall_together / (teacher_stage + student_stage), 3),
        "first_student_step_after_first_shard_s": round(
            report["students"]["s"]["first_step_at"] - report["first_shard_done_at"], 2
        ),
        "first_student_step_before_last_shard_s": round(
            report["last_shard_done_at"] - report["students"]["s"]["first_step_at"], 2
        ),
        "rounds": _round_overhead(cluster.reload(together)),
    }


def _round_overhead(job: Any) -> dict[str, Any]:
    """Per round: time from queued to merged vs the replica's own training time."""
    ckpt = checkpoints.latest(job.paths, "s")
    assert ckpt is not None
    rows = []
    for rd in ckpt.meta.rounds:
        assert rd.queued_at is not None
        rows.append((rd.merged_at - rd.queued_at, rd.replicas[0].seconds))
    walls = sum(w for w, _ in rows)
    train = sum(s for _, s in rows)
    return {
        "rounds": len(rows),
        "round_wall_s": round(walls, 2),
        "training_s": round(train, 2),
        "overhead_share": round(1 - train / walls, 3),
    }


def scaling(root: Path, cluster: Cluster, records: int = 480, shards: int = 4) -> dict[str, Any]:
    """Teacher tokens/s with 1 and with 2 worker processes of one thread each."""
    out = {}
    for n in (1, 2):
        job = cluster.job(spec(root, records, shards, f"scale-{n}"))
        for i in range(n):
            cluster.worker(f"t{i}", "teacher")
        t = time.time()
        cluster.submit(job)
        while not _shards_done(job):
            time.sleep(0.1)
        wall = time.time() - t
        tokens = sum(read_json(job.paths.shard_stats(i))["tokens"] for i in range(shards))
        out[f"{n}_workers_tokens_per_s"] = round(tokens / wall, 1)
        for i in range(n):
            cluster.stop(f"t{i}")
    out["speedup"] = round(out["2_workers_tokens_per_s"] / out["1_workers_tokens_per_s"], 3)
    return out
