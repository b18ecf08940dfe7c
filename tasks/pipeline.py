"""The canvas: which task follows which. No compute here.

    teacher_shard(i) ──on success──▶ chord(group(train_replica(i, r)), merge_round(i)) per track
    merge_round / teacher_eval ──when everything is merged──▶ finalize, exactly once

Tasks are addressed by name so this module imports no task module (no import cycles), and
chords are never nested (celery #3571, #6792, #4207): finalize is triggered by an exclusive
marker file on storage, not by a job-wide chord.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, chord

from app import live
from app.celery import settings_of
from app.job_store import Job
from storage import cache, checkpoints
from storage.atomic import create_exclusive

log = logging.getLogger(__name__)


def teacher_key(shard: int) -> str:
    return f"teacher-{shard:05d}"


def replica_key(track: str, shard: int, replica: int) -> str:
    return f"replica-{track}-{shard:05d}-{replica}"


def merge_key(track: str, shard: int) -> str:
    return f"merge-{track}-{shard:05d}"


def submit(
    app: Celery, job: Job, shards: list[int] | None = None, teacher_eval: bool = True
) -> None:
    """Queue the teacher stage: one task per shard, plus the teacher's eval."""
    for shard in range(job.n_shards) if shards is None else shards:
        app.signature("distillq.teacher_shard", args=(job.id, shard)).apply_async()
    if job.spec.has_teacher and teacher_eval:
        app.signature("distillq.teacher_eval", args=(job.id,)).apply_async()


def start_rounds(app: Celery, job: Job, shard: int, tracks: list[str] | None = None) -> None:
    """One chord per student track: R replicas on ``shard``, then the merge."""
    for spec in job.spec.students:
        if tracks is not None and spec.name not in tracks:
            continue
        replicas = [
            app.signature(
                "distillq.train_replica", args=(job.id, spec.name, shard, r), immutable=True
            )
            for r in range(spec.replicas)
        ]
        body = app.signature("distillq.merge_round", args=(job.id, spec.name, shard))
        chord(replicas, body).apply_async()


def start_rounds_once(app: Celery, job: Job, shard: int) -> None:
    """Start ``shard``'s rounds unless an earlier delivery of its teacher task already did.

    A worker can die after writing the shard but before queuing its rounds; the redelivered
    task then finds the shard done and must still queue them.
    """
    if job.paths.rounds_queued(shard).exists():
        return
    start_rounds(app, job, shard)
    create_exclusive(job.paths.rounds_queued(shard))


def merged_shards(job: Job, track: str) -> set[int]:
    ckpt = checkpoints.latest(job.paths, track)
    return set(ckpt.meta["merged_shards"]) if ckpt else set()


def ready_to_finalize(job: Job) -> bool:
    everything = set(range(job.n_shards))
    if any(merged_shards(job, s.name) != everything for s in job.spec.students):
        return False
    return not job.spec.has_teacher or job.paths.teacher_eval.exists()


def maybe_finalize(app: Celery, job: Job) -> bool:
    """Queue finalize once, when the last round is merged and the teacher eval is in."""
    if ready_to_finalize(job) and create_exclusive(job.paths.finalize_claim):
        app.signature("distillq.finalize", args=(job.id,)).apply_async()
        log.info("job %s: all rounds merged, finalize queued", job.id)
        return True
    return False


def resubmit(app: Celery, job: Job) -> dict[str, Any]:
    """Rebuild the remaining work from storage alone (after Redis lost its queues).

    Failure records are cleared: the work they name is queued again (with fresh attempts).
    """
    for f in job.paths.failures_dir.glob("*.json") if job.paths.failures_dir.exists() else []:
        f.unlink()
    live.reset_attempts(live.client(settings_of(app).broker_url), job.id)
    todo_teacher, rounds = [], 0
    for shard in range(job.n_shards):
        if cache.verified(job.paths.shard(shard), job.paths.shard_stats(shard)) is None:
            todo_teacher.append(shard)
            continue
        missing = [s.name for s in job.spec.students if shard not in merged_shards(job, s.name)]
        if missing:
            start_rounds(app, job, shard, missing)
            rounds += len(missing)
    need_eval = job.spec.has_teacher and not job.paths.teacher_eval.exists()
    submit(app, job, todo_teacher, teacher_eval=need_eval)
    finalize = False
    if not job.paths.report.exists() and ready_to_finalize(job):
        job.paths.finalize_claim.unlink(missing_ok=True)
        finalize = maybe_finalize(app, job)
    return {
        "teacher_shards": todo_teacher,
        "rounds": rounds,
        "teacher_eval": need_eval,
        "finalize": finalize,
    }
