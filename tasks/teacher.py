"""Tasks of the ``teacher`` queue. Thin: load the job, call core.stages, chain the next step."""

from __future__ import annotations

from typing import Any

from distillq.core import stages
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
