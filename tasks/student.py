"""Tasks of the ``student`` queue: replicas, the merge (under the track lock), finalize."""

from __future__ import annotations

from typing import Any

from app import live, merge, stages
from app.celery import app
from tasks import pipeline
from tasks.base import JobTask


class StudentTask(JobTask):
    abstract = True

    def key_of(self, args: tuple) -> str:
        if self.name.endswith("train_replica"):
            return pipeline.replica_key(args[1], args[2], args[3])
        if self.name.endswith("merge_round"):
            return pipeline.merge_key(args[2], args[3])
        return "finalize"


@app.task(name="distillq.train_replica", bind=True, base=StudentTask)
def train_replica(
    self: StudentTask, job_id: str, track: str, shard: int, replica: int
) -> dict[str, Any]:
    job = self.job(job_id)
    key = pipeline.replica_key(track, shard, replica)
    with self.attempt(job, key) as n:
        stats = stages.replica(job, track, shard, replica, self.progress(job, key))
    if stats.get("skipped") == "regenerate":
        pipeline.regenerate_shard(self.app, job, shard)
    elif n > 1:
        # An earlier delivery died, or its result never reached Redis: Celery may have failed
        # the chord, so its merge may never come. Storage knows whether the round is complete.
        pipeline.merge_if_complete(self.app, job, track, shard)
    return stats


@app.task(name="distillq.merge_round", bind=True, base=StudentTask)
def merge_round(
    self: StudentTask, replicas: list[dict[str, Any]], job_id: str, track: str, shard: int
) -> dict[str, Any]:
    job = self.job(job_id)
    if any(r.get("skipped") in ("regenerate", "missing") for r in replicas):
        pipeline.abandon_round(self.app, job, track, shard)
        return {"merged": False, "abandoned": True}
    # Not pausable: its replicas ran already, and merging them is how that work is kept.
    with (
        self.attempt(job, pipeline.merge_key(track, shard), pausable=False),
        live.track_lock(self.redis(), job_id, track),
    ):
        result = merge.merge_round(job, track, shard)
    pipeline.advance(self.app, job, track)
    pipeline.maybe_finalize(self.app, job)
    return result


@app.task(name="distillq.finalize", bind=True, base=StudentTask)
def finalize(self: StudentTask, job_id: str) -> dict[str, Any]:
    job = self.job(job_id)
    with self.attempt(job, "finalize"):
        data = stages.finalize(job)
    return {
        "report": str(job.paths.report),
        "students": {k: v["eval_loss"] for k, v in data["students"].items()},
    }
