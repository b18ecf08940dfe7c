"""Commands that follow a job: status, watch, wait."""

from __future__ import annotations

import argparse
import sys

from distillq.app.api import Client
from distillq.app.commands.common import Add, job_and_settings, job_arg, json_flag
from distillq.app.view import EXIT_FAILED, EXIT_TIMEOUT
from distillq.errors import JobCancelled, JobFailed, WaitTimeout


def register(add: Add) -> None:
    st = add("status", cmd_status, "per-shard and per-track state (exit 1 if the job failed)")
    job_arg(st)
    json_flag(st, "the status")
    wa = add("watch", cmd_watch, "live progress until the job ends")
    job_arg(wa)
    wa.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    wa.add_argument(
        "--timeout", type=float, default=None, help="give up after this many seconds (exit 3)"
    )
    wt = add("wait", cmd_wait, "block until the job is done; non-zero on failure or timeout")
    job_arg(wt)
    wt.add_argument(
        "--timeout", type=float, default=3600.0, help="give up after this many seconds (exit 3)"
    )
    wt.add_argument(
        "--stall",
        type=float,
        default=None,
        help="give up once the job has not moved for this many seconds: no shard, round or "
        "task progress (exit 3); for CI, where a slow machine must not fail a job that moves",
    )
    wt.add_argument("--interval", type=float, default=1.0, help="seconds between checks")


def cmd_status(args: argparse.Namespace) -> int:
    from distillq.app.view import dumps, render
    from distillq.core.control.status import job_status
    from distillq.core.runtime import broker

    job, s = job_and_settings(args)
    r, why = broker.client_or_why(s.broker_url, s.sentinel_master)
    st = job_status(job, r, broker=why)
    print(dumps(st) if args.json else render(st))
    return EXIT_FAILED if st.state == "failed" else 0


def cmd_watch(args: argparse.Namespace) -> int:
    from distillq.app.view import follow
    from distillq.core.control.status import JobStatus, job_status
    from distillq.core.runtime import broker

    job, s = job_and_settings(args)

    def frame() -> JobStatus:
        r, why = broker.client_or_why(
            s.broker_url, s.sentinel_master
        )  # each frame: the broker may fail over while it is watched
        return job_status(job, r, broker=why)

    return follow(frame, args.interval, args.timeout)


def cmd_wait(args: argparse.Namespace) -> int:
    job = Client(args.broker, args.storage).job(args.job)
    try:
        st = job.wait(args.timeout, stall=args.stall, interval=args.interval)
    except WaitTimeout as e:
        print(e, file=sys.stderr)
        return EXIT_TIMEOUT
    except (JobFailed, JobCancelled) as e:
        print(e, file=sys.stderr)
        return EXIT_FAILED
    print(f"job {job.id} done: {st.report}")
    return 0
