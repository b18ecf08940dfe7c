"""Tasks of the ``student`` queue: replicas, the merge (under the track lock), finalize."""

from __future__ import annotations

from typing import Any

from distillq.core import onpolicy, stages
from distillq.core.control import placement
from distillq.core.runtime import live
from distillq.core.student import merge
from distillq.storage import records, taskkeys
from distillq.storage.records import ReplicaOutcome
from distillq.storage.taskkeys import TaskKey
from distillq.tasks import pipeline
from distillq.tasks.base import JobTask
from distillq.tasks.celery_app import app, settings_of


def _replica_key(job_id: str, track: str, shard: int, replica: int) -> TaskKey:
    return taskkeys.replica(track, shard, replica)


def _merge_key(replicas: list[dict[str, Any]], job_id: str, track: str, shard: int) -> TaskKey:
    return taskkeys.merge(track, shard)


def _sample_key(job_id: str, track: str, round_: int, part: int) -> TaskKey:
    return taskkeys.sample(track, round_, part)


def _finalize_key(job_id: str) -> TaskKey:
    return taskkeys.FINALIZE


@app.task(
    name="distillq.train_replica", bind=True, base=JobTask, work_key=staticmethod(_replica_key)
)
def train_replica(
    self: JobTask, job_id: str, track: str, shard: int, replica: int
) -> dict[str, Any]:
    job = self.job(job_id)
    key = _replica_key(job_id, track, shard, replica)
    with self.attempt(job, key, needs=placement.student_needs(job, track)) as n:
        outcome = stages.replica(job, track, shard, replica, self.progress(job, key))
    if outcome.skipped == "regenerate":
        pipeline.regenerate_shard(self.app, job, job.cache_shard(shard))
    elif n > 1:
        # An earlier delivery died, or its result never reached Redis: Celery may have failed
        # the chord, so its merge may never come. Storage knows whether the round is complete.
        pipeline.merge_if_complete(self.app, job, track, shard)
    return outcome.to_json()


@app.task(name="distillq.sample_part", bind=True, base=JobTask, work_key=staticmethod(_sample_key))
def sample_part(self: JobTask, job_id: str, track: str, round_: int, part: int) -> dict[str, Any]:
    """On-policy: the track's current version continues one part of the round's prompts;
    the teacher scores them next."""
    job = self.job(job_id)
    key = _sample_key(job_id, track, round_, part)
    with self.attempt(job, key, needs=placement.student_needs(job, track)):
        stats = onpolicy.sample_part(job, track, round_, part, self.progress(job, key))
    pipeline.send_score(self.app, job, track, round_, part)
    return records.to_json(stats)


@app.task(name="distillq.merge_round", bind=True, base=JobTask, work_key=staticmethod(_merge_key))
def merge_round(
    self: JobTask, replicas: list[dict[str, Any]], job_id: str, track: str, shard: int
) -> dict[str, Any]:
    job = self.job(job_id)
    outcomes = [ReplicaOutcome.from_json(r) for r in replicas]
    if any(o.skipped in ("regenerate", "missing") for o in outcomes):
        pipeline.abandon_round(self.app, job, track, shard)
        return {"merged": False, "abandoned": True}
    # Not pausable: its replicas ran already, and merging them is how that work is kept.
    with (
        self.attempt(
            job,
            _merge_key(replicas, job_id, track, shard),
            pausable=False,
            needs=placement.student_needs(job, track),
        ),
        live.track_lock(self.redis(), job_id, track),
    ):
        # Seen by `status` as running work until the attempt ends (it clears the entry):
        # a merge, with its held-out eval, takes seconds.
        self.progress(job, _merge_key(replicas, job_id, track, shard))({"step": 0, "steps": 1})
        result = merge.merge_round(job, track, shard)
    self.log_nodes(job)
    pipeline.advance(self.app, job, track)
    pipeline.maybe_finalize(self.app, job)
    return records.to_json(result)


@app.task(
    name="distillq.finalize",
    bind=True,
    base=JobTask,
    work_key=staticmethod(_finalize_key),
    ignore_result=True,  # nothing reads it, and it would outlive release_job by result_expires
)
def finalize(self: JobTask, job_id: str) -> dict[str, Any]:
    job = self.job(job_id)
    with self.attempt(job, _finalize_key(job_id), needs=placement.finalize_needs(job)):
        data = stages.finalize(job)
    # The job is done: what Redis holds of it (attempt counts, task results) goes within
    # finished_expires instead of result_expires, so Redis does not grow with finished jobs.
    live.release_job(self.redis(), job_id, settings_of(self.app).finished_expires)
    return {
        "report": str(job.paths.report),
        "students": {k: v.eval_loss for k, v in data.students.items()},
    }
