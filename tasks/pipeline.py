"""The canvas: which task follows which. No compute here.

    teacher_shard(i) ──lands──▶ advance(track): chord(train_replica(i, r) for r, merge_round(i))
    merge_round(i) ──merged──▶ advance(track): the next finished shard's round, if any
    merge_round / teacher_eval ──when everything is merged──▶ finalize, exactly once

Tasks are addressed by name so this module imports no task module (no import cycles), and
chords are never nested (celery #3571, #6792, #4207): finalize is triggered by an exclusive
marker file on storage, not by a job-wide chord.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from celery import Celery, Signature, chord

from distillq.core import faults
from distillq.core.control import state as control
from distillq.core.job.jobs import Job
from distillq.core.runtime import broker, live
from distillq.storage import cache, checkpoints, keys, records, taskkeys
from distillq.storage.atomic import create_exclusive
from distillq.storage.layout import sidecar
from distillq.storage.records import RoundMarker
from distillq.tasks import sending
from distillq.tasks.celery_app import settings_of

log = logging.getLogger(__name__)


def missing_shards(job: Job) -> list[int]:
    """Shards with no verified cache yet (all of them, unless the job reads another's cache)."""
    return [
        shard
        for shard in range(job.n_shards)
        if cache.verified(job.paths.shard(shard), job.paths.shard_stats(shard)) is None
    ]


def submit(
    app: Celery, job: Job, shards: list[int] | None = None, teacher_eval: bool = True
) -> list[int]:
    """Queue the teacher stage: one task per shard the cache lacks, plus the teacher's eval
    where it has none. A job reading another's cache starts its rounds on the shards there.
    Returns the shards queued."""
    todo = missing_shards(job) if shards is None else shards
    for shard in todo:
        _send(app, _sig(app, "distillq.teacher_shard", job.id, shard))
    if job.spec.has_teacher and teacher_eval and not job.paths.teacher_eval.exists():
        _send(app, _sig(app, "distillq.teacher_eval", job.id))
    if shards is None and len(todo) < job.n_shards:
        on_shard_ready(app, job)
    return todo


def launch_round(app: Celery, job: Job, track: str, shard: int) -> None:
    """A chord: R replicas of ``track`` on ``shard``, then the merge. An on-policy track first
    samples and scores each part (``send_sample``; the last score queues the chord)."""
    spec = job.spec.student(track)
    if spec.on_policy is not None:
        # Relaunched (reconcile, resume): the chord may be what was lost, so the last score
        # (redone at once: its file is there) may queue it again.
        job.paths.onpolicy_train_queued(track, shard).unlink(missing_ok=True)
        for part in range(spec.parts):
            send_sample(app, job, track, shard, part)
        return
    launch_train(app, job, track, shard)


def send_sample(app: Celery, job: Job, track: str, round_: int, part: int) -> None:
    _send(app, _sig(app, "distillq.sample_part", job.id, track, round_, part))


def send_score(app: Celery, job: Job, track: str, round_: int, part: int) -> None:
    _send(app, _sig(app, "distillq.score_part", job.id, track, round_, part))


def after_score(app: Celery, job: Job, track: str, round_: int) -> bool:
    """Queue the round's training once every part is scored, once (under the track lock).
    The chord goes before the marker: a task killed between them queues it twice, which is
    safe (a replica finds its stats, a merge finds the round merged); the other order could
    lose it."""
    with live.track_lock(_redis(app), job.id, track):
        marker = job.paths.onpolicy_train_queued(track, round_)
        if marker.exists() or not scored(job, track, round_):
            return False
        launch_train(app, job, track, round_)
        create_exclusive(marker)
    log.info("job %s track %s round %d: scored, training queued", job.id, track, round_)
    return True


def scored(job: Job, track: str, round_: int) -> bool:
    """Whether every part of an on-policy round is scored (its training can be queued)."""
    return all(
        cache.verified(p, sidecar(p)) is not None
        for p in (
            job.paths.onpolicy_scored(track, round_, r)
            for r in range(job.spec.student(track).parts)
        )
    )


def launch_train(app: Celery, job: Job, track: str, shard: int) -> None:
    """A chord: R replicas of ``track`` on ``shard``, then the merge."""
    spec = job.spec.student(track)
    replicas = [
        _sig(app, "distillq.train_replica", job.id, track, shard, r, immutable=True)
        for r in range(spec.replicas)
    ]
    _send(app, chord(replicas, _sig(app, "distillq.merge_round", job.id, track, shard)))


def advance(app: Celery, job: Job, track: str) -> int | None:
    """Start ``track``'s next round unless one is in flight; returns the shard it started.

    Rounds of a track run one after another, each from the previous merge, taking shards in
    the order they finished. Left to the FIFO queue, a fast teacher would put every round's
    replicas ahead of the merges they need, and all would train from the initial weights.
    Called whenever a shard lands or a merge ends; idempotent under the track lock.
    """
    if control.state(job) != control.RUNNING:
        return None  # paused or cancelled: `resume` calls advance again
    with live.track_lock(_redis(app), job.id, track):
        merged = checkpoints.merged_shards(job.paths, track)
        marker = job.paths.round_inflight(track)
        inflight = records.read_if_exists(RoundMarker, marker)
        if inflight is not None and inflight.shard not in merged:
            return None
        shard = next_round(job, track, merged)
        if shard is None:
            marker.unlink(missing_ok=True)
            return None
        records.write(marker, RoundMarker(shard=shard, queued_at=time.time()))
        try:
            launch_round(app, job, track, shard)
        except BaseException:
            marker.unlink()  # not queued: the next advance (a retry of this task) queues it
            raise
        log.info("job %s track %s: round on shard %d queued", job.id, track, shard)
        faults.hit(f"advanced:{track}:{len(merged)}")  # a drill's point: a round just queued
        return shard


def next_round(job: Job, track: str, merged: set[int]) -> int | None:
    """The round ``track`` runs next, if one is ready: in the first dataset epoch, the
    unmerged shard that finished first; in later ones (once the previous epoch is merged),
    the shards again in that same order, read from the cache."""
    n = job.n_shards
    when = {i: cache.finished_at(job.paths.shard_stats(i)) for i in range(n)}
    finished = {i: t for i, t in when.items() if t is not None}
    order = sorted(finished, key=lambda i: (finished[i], i))
    for epoch in range(job.spec.student(track).dataset_epochs):
        todo = [epoch * n + i for i in order if epoch * n + i not in merged]
        if todo:
            return todo[0]
        if len(order) < n:
            return None  # the epoch's last shards are not written yet
    return None


def merge_if_complete(app: Celery, job: Job, track: str, shard: int) -> bool:
    """Queue ``shard``'s merge if every replica's delta is on storage, from the current version.

    The chord normally does this; a duplicate merge is a no-op (merges are idempotent).
    """
    latest = checkpoints.latest(job.paths, track)
    version = latest.version if latest else 0
    if latest is not None and shard in latest.meta.merged_shards:
        return False
    replicas = range(job.spec.student(track).replicas)
    stats = [checkpoints.replica_stats(job.paths, track, shard, r) for r in replicas]
    if not all(s is not None and s.start_version == version for s in stats):
        return False
    _send(app, _sig(app, "distillq.merge_round", [], job.id, track, shard, job_id=job.id))
    log.info("job %s track %s shard %d: replicas complete, merge queued", job.id, track, shard)
    return True


def abandon_round(app: Celery, job: Job, track: str, shard: int) -> None:
    """``shard``'s cache turned out corrupt mid-round: free the track for other shards; the
    round is queued again by ``advance`` once the regenerated shard lands."""
    with live.track_lock(_redis(app), job.id, track):
        marker = job.paths.round_inflight(track)
        inflight = records.read_if_exists(RoundMarker, marker)
        if inflight is not None and inflight.shard == shard:
            marker.unlink()
    advance(app, job, track)


def regenerate_shard(app: Celery, job: Job, shard: int) -> None:
    """Queue the teacher task again for a quarantined shard, with fresh attempts."""
    _redis(app).delete(keys.attempts(job.id, str(taskkeys.teacher(shard))))
    _send(app, _sig(app, "distillq.teacher_shard", job.id, shard))


def on_shard_ready(app: Celery, job: Job) -> None:
    for spec in job.spec.students:
        advance(app, job, spec.name)
    if not job.spec.students:
        maybe_finalize(app, job)  # a cache-only job ends when its last shard lands


def _sig(
    app: Celery, name: str, *args: Any, job_id: str = "", immutable: bool = False
) -> Signature:
    """A task of a job (its id the first argument unless ``job_id`` is given), with a task id
    that starts with the job's: when the job ends, ``live.release_job`` finds its results."""
    owner = job_id or str(args[0])
    return app.signature(name, args=args, immutable=immutable, task_id=keys.task_id(owner))


def _send(app: Celery, sig: Signature) -> None:
    sending.send(app, sig.apply_async, sig.name or "a chord")


def _redis(app: Celery) -> Any:
    s = settings_of(app)
    return broker.client(s.broker_url, s.sentinel_master)


def ready_to_finalize(job: Job) -> bool:
    if any(
        checkpoints.merged_shards(job.paths, s.name) != set(range(job.rounds(s.name)))
        for s in job.spec.students
    ):
        return False
    if not job.spec.students and missing_shards(job):
        return False
    return not job.spec.has_teacher or job.paths.teacher_eval.exists()


def maybe_finalize(app: Celery, job: Job) -> bool:
    """Queue finalize once, when the last round is merged and the teacher eval is in."""
    if ready_to_finalize(job) and create_exclusive(job.paths.finalize_claim):
        _send(app, _sig(app, "distillq.finalize", job.id))
        log.info("job %s: all rounds merged, finalize queued", job.id)
        return True
    return False


@dataclass(frozen=True)
class Resubmitted:
    """What ``resubmit`` queued again; `distillq resume` prints it."""

    teacher_shards: list[int]
    rounds: dict[str, int | None]
    teacher_eval: bool
    finalize: bool


def resubmit(app: Celery, job: Job) -> Resubmitted:
    """Rebuild the remaining work from storage alone (after Redis lost its queues).

    Failure records are cleared: the work they name is queued again (with fresh attempts).
    """
    for f in job.paths.failures_dir.glob("*.json") if job.paths.failures_dir.exists() else []:
        f.unlink()
    live.reset_attempts(_redis(app), job.id)
    todo_teacher = missing_shards(job)
    rounds: dict[str, int | None] = {}
    for spec in job.spec.students:
        # A round in flight when Redis lost its queue will never merge: start it again.
        job.paths.round_inflight(spec.name).unlink(missing_ok=True)
        rounds[spec.name] = advance(app, job, spec.name)
    need_eval = job.spec.has_teacher and not job.paths.teacher_eval.exists()
    submit(app, job, todo_teacher, teacher_eval=need_eval)
    finalize = False
    if not job.paths.report.exists() and ready_to_finalize(job):
        job.paths.finalize_claim.unlink(missing_ok=True)
        finalize = maybe_finalize(app, job)
    return Resubmitted(todo_teacher, rounds, need_eval, finalize)
