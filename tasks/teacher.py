"""Tasks of the ``teacher`` queue. Thin: load the job, call app.stages, chain the next step."""

from __future__ import annotations

from typing import Any

from app import stages
from app.celery import app
from tasks import pipeline
from tasks.base import JobTask


class TeacherTask(JobTask):
    abstract = True

    def key_of(self, args: tuple) -> str:
        return pipeline.teacher_key(args[1]) if len(args) > 1 else "teacher-eval"


@app.task(name="distillq.teacher_shard", bind=True, base=TeacherTask)
def teacher_shard(self: TeacherTask, job_id: str, shard: int) -> dict[str, Any]:
    job = self.job(job_id)
    key = pipeline.teacher_key(shard)
    with self.attempt(job, key):
        result = stages.teacher_shard(job, shard, self.progress(job, key))
    pipeline.on_shard_ready(self.app, job)
    return {
        k: result[k] for k in ("shard", "sha256", "bytes", "samples", "tokens", "target_positions")
    }


@app.task(name="distillq.teacher_eval", bind=True, base=TeacherTask)
def teacher_eval(self: TeacherTask, job_id: str) -> dict[str, Any]:
    job = self.job(job_id)
    with self.attempt(job, "teacher-eval"):
        result = stages.teacher_eval(job)
    pipeline.maybe_finalize(self.app, job)
    return result
