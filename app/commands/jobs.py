"""Commands that submit and steer jobs: enqueue, resume, pause, cancel, and the list of jobs."""

from __future__ import annotations

import argparse
import json
import sys

from distillq.app.api import Client
from distillq.app.commands.common import Add, job_arg, settings_from
from distillq.errors import DistillqError


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


def _client(args: argparse.Namespace) -> Client:
    return Client(getattr(args, "broker", None), getattr(args, "storage", None))


def cmd_enqueue(args: argparse.Namespace) -> int:
    job = _client(args).enqueue(
        args.spec,
        overrides=args.set,
        max_records=args.max_records,
        skip_bad_lines=args.skip_bad_lines,
    )
    for note in job.notes:
        print(note, file=sys.stderr)
    print(job.id)
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    import dataclasses

    was, queued = _client(args).job(args.job).resume()
    print(f"job {args.job} resumed (was {was})", file=sys.stderr)
    print(json.dumps(dataclasses.asdict(queued)))
    return 0


def cmd_pause(args: argparse.Namespace) -> int:
    _client(args).job(args.job).pause()
    print(f"job {args.job} paused: running tasks finish; nothing new starts; "
          f"`distillq resume {args.job}` continues it")  # fmt: skip
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    _client(args).job(args.job).cancel()
    print(f"job {args.job} cancelled: running tasks stop at their next batch; "
          f"`distillq resume {args.job}` continues it")  # fmt: skip
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
