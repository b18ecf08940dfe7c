"""After the broker changed under the jobs (a Sentinel failover, a restart): queue again the
work storage says is owed and that no message holds.

Redis replicates asynchronously: a primary that dies takes with it its last writes, which
the promoted replica never saw. Among them may be a task just queued (a round's chord after
a shard landed), a chord counter's last increment (the merge never fires), or an unacked
record. Storage is the record of what is done (docs/DESIGN.md §4), so what is owed can be
read there; what is held is what a message in a queue, a delivered and unacked message, or a
running task's progress entry names. The difference is queued again. Queuing work twice is
safe (every effect is idempotent, the fence refuses a superseded attempt's writes); the cost
is work redone, which holding back for the in-flight tasks keeps to the lost ones.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

from celery import Celery

from distillq.core.control import state as control
from distillq.core.job.jobs import Job, list_jobs, load_job
from distillq.core.runtime import live
from distillq.core.runtime.settings import QUEUES
from distillq.storage import checkpoints, keys, records, taskkeys
from distillq.storage.records import RoundMarker
from distillq.tasks import pipeline

log = logging.getLogger(__name__)


def held_work(app: Celery, r: Any) -> set[tuple[str, str]]:
    """(job id, task key) of every task a queue, the unacked hash or a progress entry holds."""
    app.loader.import_default_modules()  # the task modules, to read their arguments
    held: set[tuple[str, str]] = set()
    messages = [m for q in QUEUES for m in r.lrange(q, 0, -1)]
    messages += [json.dumps(json.loads(v)[0]) for v in r.hvals(keys.KOMBU_UNACKED)]
    for raw in messages:
        if (named := _names(app, json.loads(raw))) is not None:
            held.add(named)
    for key in r.scan_iter(match=keys.all_progress_pattern(), count=1000):
        if (named := keys.parse_progress(key.decode())) is not None:
            held.add(named)
    return held


def _names(app: Celery, message: dict[str, Any]) -> tuple[str, str] | None:
    task = app.tasks.get(message.get("headers", {}).get("task", ""))
    if task is None or not hasattr(task, "job_and_key"):
        return None
    try:
        args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        job_id, key = task.job_and_key(tuple(args), kwargs)
    except (KeyError, TypeError, ValueError):
        return None
    return job_id, str(key)


def reconcile(app: Celery, job: Job, held: set[tuple[str, str]]) -> list[str]:
    """Queue the work of ``job`` that storage says is owed and nothing holds; returns its keys."""
    if job.paths.report.exists() or control.state(job) != control.RUNNING:
        return []
    mine = {key for job_id, key in held if job_id == job.id}
    failed = {f.stem for f in job.paths.failures_dir.glob("*.json")}
    queued: list[str] = []
    lost = [
        shard
        for shard in pipeline.missing_shards(job)
        if str(taskkeys.teacher(shard)) not in mine | failed
    ]
    eval_lost = (
        job.spec.has_teacher
        and not job.paths.teacher_eval.exists()
        and str(taskkeys.TEACHER_EVAL) not in mine | failed
    )
    if lost or eval_lost:
        pipeline.submit(app, job, lost, teacher_eval=eval_lost)
        queued += [str(taskkeys.teacher(s)) for s in lost] + ["teacher-eval"] * eval_lost
    for spec in job.spec.students:
        track = spec.name
        marker = records.read_if_exists(RoundMarker, job.paths.round_inflight(track))
        if marker is None:
            continue  # between rounds: the next shard to land, or merge to end, starts one
        latest = checkpoints.latest(job.paths, track)
        if latest is not None and marker.shard in latest.meta.merged_shards:
            continue
        round_keys = {str(taskkeys.replica(track, marker.shard, i)) for i in range(spec.replicas)}
        round_keys.add(str(taskkeys.merge(track, marker.shard)))
        if spec.on_policy is not None:
            for i in range(spec.parts):
                round_keys |= {
                    str(taskkeys.sample(track, marker.shard, i)),
                    str(taskkeys.score(track, marker.shard, i)),
                }
        if round_keys & (mine | failed):
            continue  # held somewhere, or failed for a person to see
        if not pipeline.merge_if_complete(app, job, track, marker.shard):
            pipeline.launch_round(app, job, track, marker.shard)  # done replicas skip their work
        queued.append(f"round {track}/{marker.shard}")
    finalize_held = str(taskkeys.FINALIZE) in mine | failed
    if pipeline.ready_to_finalize(job) and not finalize_held:
        job.paths.finalize_claim.unlink(missing_ok=True)  # its message may be what was lost
        if pipeline.maybe_finalize(app, job):
            queued.append("finalize")
    return queued


def reconcile_all(app: Celery, r: Any, storage: Any) -> dict[str, list[str]]:
    """``reconcile`` every unfinished job on ``storage``; returns what was queued, per job.
    Track locks go first: one the old primary's death resurrected would stall merges."""
    if n := live.drop_locks(r):
        log.warning("%d track lock(s) dropped after the broker changed", n)
    held = held_work(app, r)
    out = {}
    for job_id in list_jobs(storage):
        queued = reconcile(app, load_job(storage, job_id), held)
        if queued:
            log.warning("job %s: queued again after the broker changed: %s", job_id, queued)
            out[job_id] = queued
    return out
