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
    add("jobs", cmd_jobs, "list jobs on storage")


def cmd_enqueue(args: argparse.Namespace) -> int:
    from distillq.core.create import create_job
    from distillq.core.job.jobs import data_notes
    from distillq.core.job.load import load_spec
    from distillq.tasks import pipeline
    from distillq.tasks.celery_app import app

    # The spec first: fixing a typo in it should not need a running Redis.
    spec = load_spec(Path(args.spec), args.set)
    s = ready(settings_from(args))
    check_writable(s.storage)
    job = create_job(s.storage, spec, skip_bad_lines=args.skip_bad_lines)
    pipeline.submit(app, job)
    for note in data_notes(job):
        print(note, file=sys.stderr)
    print(
        f"queued {job.n_shards} teacher shards, {len(spec.students)} student track(s); storage {job.paths.root}",
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
    from distillq.core.job.jobs import list_jobs

    for j in list_jobs(settings_from(args).storage):
        print(j)
    return 0
