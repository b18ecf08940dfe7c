"""Tasks of the ``teacher`` queue. Thin: load the job, call core.stages, chain the next step."""

from __future__ import annotations

from typing import Any

from distillq.core import onpolicy, stages
from distillq.core.control import placement
from distillq.storage import records, taskkeys
from distillq.storage.taskkeys import TaskKey
from distillq.tasks import pipeline
from distillq.tasks.base import JobTask
from distillq.tasks.celery_app import app


def _shard_key(job_id: str, shard: int) -> TaskKey:
    return taskkeys.teacher(shard)


def _eval_key(job_id: str) -> TaskKey:
    return taskkeys.TEACHER_EVAL


def _score_key(job_id: str, track: str, round_: int, part: int) -> TaskKey:
    return taskkeys.score(track, round_, part)


@app.task(name="distillq.teacher_shard", bind=True, base=JobTask, work_key=staticmethod(_shard_key))
def teacher_shard(self: JobTask, job_id: str, shard: int) -> dict[str, Any]:
    job = self.job(job_id)
    key = _shard_key(job_id, shard)
    with self.attempt(job, key, needs=placement.teacher_needs(job)):
        stats, skipped = stages.teacher_shard(job, shard, self.progress(job, key))
    self.log_nodes(job)
    pipeline.on_shard_ready(self.app, job)
    return {**records.to_json(stats), "skipped": skipped}


@app.task(name="distillq.teacher_eval", bind=True, base=JobTask, work_key=staticmethod(_eval_key))
def teacher_eval(self: JobTask, job_id: str) -> dict[str, Any]:
    job = self.job(job_id)
    with self.attempt(job, _eval_key(job_id), needs=placement.teacher_needs(job)):
        result = stages.teacher_eval(job)
    pipeline.maybe_finalize(self.app, job)
    return records.to_json(result)


@app.task(name="distillq.score_part", bind=True, base=JobTask, work_key=staticmethod(_score_key))
def score_part(self: JobTask, job_id: str, track: str, round_: int, part: int) -> dict[str, Any]:
    """On-policy: the teacher scores what the student wrote in one part of a round."""
    job = self.job(job_id)
    key = _score_key(job_id, track, round_, part)
    with self.attempt(job, key, needs=placement.teacher_needs(job)):
        stats = onpolicy.score_part(job, track, round_, part, self.progress(job, key))
    if stats is None:
        pipeline.send_sample(self.app, job, track, round_, part)
        return {"resampled": True}
    pipeline.after_score(self.app, job, track, round_)
    return records.to_json(stats)
