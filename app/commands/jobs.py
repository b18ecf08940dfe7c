"""Commands that submit and steer jobs: enqueue, resume, pause, cancel, and the list of jobs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from distillq.app.commands.common import Add, job_arg, ready, settings_from
from distillq.errors import DistillqError
from distillq.storage.layout import check_writable


def register(add: Add) -> None:
    e = add("enqueue", cmd_enqueue, "submit a job; prints its id on the last line")
    e.add_argument("spec", help="job spec YAML")
    e.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec field, e.g. students.0.lr=1e-4 (repeatable)",
    )
    e.add_argument(
        "--max-records",
        type=int,
        metavar="N",
        help="a quick try: only the dataset's first N records (the spec's max_records)",
    )
    e.add_argument(
        "--skip-bad-lines",
        action="store_true",
        help="leave out malformed dataset lines (counted) instead of refusing the dataset",
    )
    for name, fn, help in [
        (
            "resume",
            cmd_resume,
            "continue a paused or cancelled job, or re-queue its remaining work from storage",
        ),
        ("pause", cmd_pause, "start no new work for the job (running tasks finish)"),
        ("cancel", cmd_cancel, "stop the job: running tasks stop at their next batch"),
    ]:
        job_arg(add(name, fn, help))
    add("jobs", cmd_jobs, "list jobs on storage, and which share a teacher cache")
    job_arg(add("remove", cmd_remove, "delete a finished or cancelled job from storage"))


def cmd_enqueue(args: argparse.Namespace) -> int:
    from distillq.core.create import create_job
    from distillq.core.job import reuse
    from distillq.core.job.jobs import data_notes
    from distillq.core.job.load import load_spec
    from distillq.tasks import pipeline
    from distillq.tasks.celery_app import app

    # The spec first: fixing a typo in it should not need a running Redis.
    storage = settings_from(args).storage
    overrides = [
        *args.set,
        *([f"max_records={args.max_records}"] if args.max_records is not None else []),
    ]
    spec = load_spec(Path(args.spec), overrides, lambda raw: reuse.resolve(raw, storage))
    s = ready(settings_from(args))
    check_writable(s.storage)
    job = create_job(s.storage, spec, skip_bad_lines=args.skip_bad_lines)
    queued = len(pipeline.submit(app, job))
    for note in data_notes(job):
        print(note, file=sys.stderr)
    reused = (
        f", {job.n_shards - queued} read from job {job.info.cache_job}'s cache"
        if job.info.cache_job
        else ""
    )
    print(
        f"queued {queued} teacher shards{reused}, {len(spec.students)} student track(s); "
        f"storage {job.paths.root}",
        file=sys.stderr,
    )
    from distillq.core.runtime import broker, registry

    for line in registry.unheard(broker.client(s.broker_url), ["teacher", "student"]):
        print(line, file=sys.stderr)
    print(job.id)
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    import dataclasses

    from distillq.core.control import state as control
    from distillq.core.job.jobs import load_job
    from distillq.tasks import pipeline
    from distillq.tasks.celery_app import app

    s = ready(settings_from(args))
    job = load_job(s.storage, args.job)
    was = control.state(job)
    control.set_state(job, control.RUNNING)
    queued = pipeline.resubmit(app, job)
    print(f"job {job.id} resumed (was {was})", file=sys.stderr)
    print(json.dumps(dataclasses.asdict(queued)))
    return 0


def cmd_pause(args: argparse.Namespace) -> int:
    return _stop(args, "paused", "running tasks finish; nothing new starts")


def cmd_cancel(args: argparse.Namespace) -> int:
    return _stop(args, "cancelled", "running tasks stop at their next batch")


def _stop(args: argparse.Namespace, new: str, what: str) -> int:
    from distillq.core.control import state as control
    from distillq.core.job.jobs import load_job

    s = settings_from(args)
    job = load_job(s.storage, args.job)
    if job.paths.report.exists():
        raise DistillqError(f"job {job.id} is done already; nothing to {args.cmd}")
    control.set_state(job, new, reason=f"distillq {args.cmd}")
    print(f"job {job.id} {new}: {what}; `distillq resume {job.id}` continues it")
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    from distillq.core.job.jobs import cache_sharing, list_jobs

    storage = settings_from(args).storage
    owners, readers = cache_sharing(storage)
    for j in list_jobs(storage):
        notes = []
        if j in owners:
            notes.append(f"reads the cache of {owners[j]}")
        if readers.get(j):
            notes.append(f"its cache is read by {', '.join(readers[j])}")
        print(f"{j}  ({'; '.join(notes)})" if notes else j)
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    import shutil

    from distillq.core.control import state as control
    from distillq.core.job.jobs import cache_sharing, load_job

    s = settings_from(args)
    job = load_job(s.storage, args.job)
    _, readers = cache_sharing(s.storage)
    if readers.get(job.id):
        raise DistillqError(
            f"job {job.id}'s teacher cache is read by {', '.join(readers[job.id])}: remove "
            "those jobs first (their students train on it)"
        )
    if not job.paths.report.exists() and control.state(job) != control.CANCELLED:
        raise DistillqError(
            f"job {job.id} is still running; `distillq cancel {job.id}` first, then remove it"
        )
    shutil.rmtree(job.paths.root)
    print(f"job {job.id} removed from {s.storage}", file=sys.stderr)
    return 0
