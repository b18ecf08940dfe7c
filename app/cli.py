"""``distillq``: subcommands map to plain functions; user errors print one line and exit 1."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from app.errors import DistillqError
from app.settings import Settings

EXIT_FAILED, EXIT_TIMEOUT = 1, 3
TERMINAL = ("done", "failed", "cancelled")


def settings_from(args: argparse.Namespace) -> Settings:
    """Environment, then flags; with no broker configured, a running `distillq up` cluster's."""
    s = Settings.from_env(
        broker_url=getattr(args, "broker", None), storage=getattr(args, "storage", None)
    )
    if not s.broker_url:
        from workers.cluster import cluster_broker

        s = s.with_(broker_url=cluster_broker(s.storage))
    return s


def _ready(s: Settings) -> Settings:
    from app import live
    from app.celery import configure

    live.ping(s.broker_url)
    configure(s)
    return s


def cmd_worker(args: argparse.Namespace) -> int:
    from workers.launch import default_queues, run_worker
    from workers.node import gpus

    s = settings_from(args)
    queues = args.queues.split(",") if args.queues else default_queues(bool(gpus()))
    cores = os.cpu_count() or 1
    threads = args.threads or max(1, cores // args.concurrency)
    run_worker(s, queues, args.concurrency, threads, args.hostname, args.loglevel)
    return 0


def cmd_enqueue(args: argparse.Namespace) -> int:
    from app.celery import app
    from app.job_store import create_job, data_notes
    from app.jobs import load_spec
    from tasks import pipeline

    # The spec first: fixing a typo in it should not need a running Redis.
    spec = load_spec(Path(args.spec), args.set)
    s = _ready(settings_from(args))
    job = create_job(s.storage, spec, skip_bad_lines=args.skip_bad_lines)
    pipeline.submit(app, job)
    for note in data_notes(job):
        print(note, file=sys.stderr)
    print(
        f"queued {job.n_shards} teacher shards, {len(spec.students)} student track(s); storage {job.paths.root}",
        file=sys.stderr,
    )
    print(job.id)
    return 0


def _job_and_redis(args: argparse.Namespace) -> tuple[Any, Any]:
    from app import live
    from app.job_store import load_job

    s = settings_from(args)
    job = load_job(s.storage, args.job)
    try:
        live.ping(s.broker_url)
        return job, live.client(s.broker_url)
    except DistillqError:
        return job, None  # storage alone still tells what is done


def cmd_status(args: argparse.Namespace) -> int:
    from app.status import dumps, job_status, render

    job, r = _job_and_redis(args)
    st = job_status(job, r)
    print(dumps(st) if args.json else render(st))
    return EXIT_FAILED if st["state"] == "failed" else 0


def cmd_watch(args: argparse.Namespace) -> int:
    from app.status import job_status, render

    job, r = _job_and_redis(args)
    return follow(lambda: job_status(job, r), render, args.interval)


def follow(get: Any, render: Any, interval: float, timeout: float | None = None) -> int:
    """Print progress until the job is done (0), failed (1) or the timeout passes (3)."""
    tty = sys.stdout.isatty()
    last, printed_at = "", 0.0
    deadline = None if timeout is None else time.time() + timeout
    while True:
        st = get()
        text = render(st)
        # On a terminal, redraw in place; in a log, a new block at most every 10 s.
        due = tty or time.time() - printed_at >= 10 or st["state"] in TERMINAL
        if text != last and due:
            if tty and last:
                sys.stdout.write(f"\x1b[{last.count(chr(10)) + 1}F\x1b[J")
            print(text, flush=True)
            last, printed_at = text, time.time()
        if st["state"] in TERMINAL:
            return 0 if st["state"] == "done" else EXIT_FAILED
        if deadline is not None and time.time() > deadline:
            return EXIT_TIMEOUT
        time.sleep(interval)


def cmd_wait(args: argparse.Namespace) -> int:
    from app.status import job_status

    job, r = _job_and_redis(args)
    deadline = time.time() + args.timeout
    while True:
        st = job_status(job, r)
        if st["state"] == "done":
            print(f"job {job.id} done: {st['report']}")
            return 0
        if st["state"] == "failed":
            for key, f in st["failures"].items():
                print(f"job {job.id} failed: {key}: {f['error']}", file=sys.stderr)
            return EXIT_FAILED
        if st["state"] == "cancelled":
            print(f"job {job.id} was cancelled", file=sys.stderr)
            return EXIT_FAILED
        if time.time() > deadline:
            print(
                f"job {job.id} not done after {args.timeout:.0f} s (state {st['state']}); `distillq status {job.id}` shows where it is",
                file=sys.stderr,
            )
            return EXIT_TIMEOUT
        time.sleep(1.0)


def cmd_resume(args: argparse.Namespace) -> int:
    from app import control
    from app.celery import app
    from app.job_store import load_job
    from tasks import pipeline

    s = _ready(settings_from(args))
    job = load_job(s.storage, args.job)
    was = control.state(job)
    control.set_state(job, control.RUNNING)
    queued = pipeline.resubmit(app, job)
    print(f"job {job.id} resumed (was {was})", file=sys.stderr)
    print(json.dumps(queued))
    return 0


def cmd_pause(args: argparse.Namespace) -> int:
    return _stop(args, "paused", "running tasks finish; nothing new starts")


def cmd_cancel(args: argparse.Namespace) -> int:
    return _stop(args, "cancelled", "running tasks stop at their next batch")


def _stop(args: argparse.Namespace, new: str, what: str) -> int:
    from app import control
    from app.job_store import load_job

    s = settings_from(args)
    job = load_job(s.storage, args.job)
    if job.paths.report.exists():
        raise DistillqError(f"job {job.id} is done already; nothing to {args.cmd}")
    control.set_state(job, new, reason=f"distillq {args.cmd}")
    print(f"job {job.id} {new}: {what}; `distillq resume {job.id}` continues it")
    return 0


def cmd_nodes(args: argparse.Namespace) -> int:
    from app import live
    from workers.node import list_nodes

    s = settings_from(args)
    live.ping(s.broker_url)
    nodes = list_nodes(live.client(s.broker_url))
    if args.json:
        print(json.dumps(nodes, indent=2))
        return 0
    print(
        f"{'node':<36} {'state':<5} {'queues':<16} {'cpus':>4} {'ram':>7} {'gpus':<24} {'beat':>6}"
    )
    for n in nodes:
        g = ", ".join(f"{x['name']} {x['memory_mb'] // 1024}G" for x in n["gpus"]) or "-"
        print(
            f"{n['hostname']:<36} {n['state']:<5} {','.join(n['queues']):<16} {n['cpus']:>4} {n['ram_gb']:>6}G {g:<24} {n['age_s']:>5}s"
        )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from app import report
    from app.job_store import load_job

    s = settings_from(args)
    job = load_job(s.storage, args.job)
    if not job.paths.report.exists():
        raise DistillqError(
            f"job {job.id} has not finished; `distillq wait {job.id}` blocks until it does"
        )
    data = report.write(job)
    print(
        report.dumps(data)
        if args.json
        else report.summary_table(data) + f"\n  plot: {job.paths.report_png}"
    )
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    from app.job_store import list_jobs

    for j in list_jobs(settings_from(args).storage):
        print(j)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from app.demo import run_demo

    if args.enqueue_only:
        from app.demo import enqueue_demo

        print(enqueue_demo(_ready(settings_from(args)), quick=args.quick))
        return 0
    return run_demo(settings_from(args), quick=args.quick)


def cmd_up(args: argparse.Namespace) -> int:
    from workers.cluster import up

    print(up(settings_from(args), args.workers, args.flower_port))
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from workers.cluster import down

    print(down(settings_from(args)))
    return 0


def cmd_flower(args: argparse.Namespace) -> int:
    from app.celery import app

    _ready(settings_from(args))
    user = args.user or os.environ.get("DISTILLQ_FLOWER_USER")
    password = args.password or os.environ.get("DISTILLQ_FLOWER_PASSWORD")
    argv = ["flower", f"--port={args.port}", f"--address={args.address}"]
    if user and password:
        argv.append(f"--basic-auth={user}:{password}")
    elif not args.no_auth:
        raise DistillqError(
            "Flower needs credentials: set DISTILLQ_FLOWER_USER and DISTILLQ_FLOWER_PASSWORD (or --no-auth on a trusted host)"
        )
    app.start(argv)
    return 0


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--broker", help="Redis URL (default: $DISTILLQ_BROKER_URL)")
    common.add_argument(
        "--storage", help="shared storage root (default: $DISTILLQ_STORAGE or ./distillq-data)"
    )
    p = argparse.ArgumentParser(
        prog="distillq", description="Distill LLMs over Celery queues on Redis."
    )
    sub = p.add_subparsers(dest="cmd", required=True)

    def add(name: str, fn: Any, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, parents=[common], help=help, description=help)
        sp.set_defaults(fn=fn)
        return sp

    d = add("demo", cmd_demo, "run the bundled demo job end to end on this machine")
    d.add_argument(
        "--quick", action="store_true", help="a smaller demo (fewer records), for smoke tests"
    )
    d.add_argument(
        "--enqueue-only",
        action="store_true",
        help="prepare the demo on storage and submit it to running workers",
    )
    u = add("up", cmd_up, "start a local cluster: embedded Redis (unless configured) and N workers")
    u.add_argument("--workers", type=int, default=2)
    u.add_argument("--flower-port", type=int, default=5555)
    add("down", cmd_down, "stop the local cluster started by `up`")
    w = add("worker", cmd_worker, "run a worker on this node")
    w.add_argument(
        "-Q", "--queues", help="comma-separated: teacher,student (default by GPU presence)"
    )
    w.add_argument(
        "-c", "--concurrency", type=int, default=1, help="worker processes (one per GPU)"
    )
    w.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads per process (default: cores / concurrency)",
    )
    w.add_argument("-n", "--hostname", help="node name (default: queues@host-pid)")
    w.add_argument("-l", "--loglevel", default="INFO")
    e = add("enqueue", cmd_enqueue, "submit a job; prints its id on the last line")
    e.add_argument("spec", help="job spec YAML")
    e.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec field, e.g. students.0.lr=1e-4",
    )
    e.add_argument(
        "--skip-bad-lines",
        action="store_true",
        help="leave out malformed dataset lines (counted) instead of refusing the dataset",
    )
    for name, fn, help in [
        ("status", cmd_status, "per-shard and per-track state"),
        ("watch", cmd_watch, "live progress until the job ends"),
        ("wait", cmd_wait, "block until the job is done; non-zero on failure or timeout"),
        (
            "resume",
            cmd_resume,
            "continue a paused or cancelled job, or re-queue its remaining work from storage",
        ),
        ("pause", cmd_pause, "start no new work for the job (running tasks finish)"),
        ("cancel", cmd_cancel, "stop the job: running tasks stop at their next batch"),
        ("report", cmd_report, "rewrite and print a finished job's report"),
    ]:
        sp = add(name, fn, help)
        sp.add_argument("job")
        sp.add_argument("--json", action="store_true")
        sp.add_argument("--timeout", type=float, default=3600.0)
        sp.add_argument("--interval", type=float, default=1.0)
    n = add("nodes", cmd_nodes, "registered worker nodes and their resources")
    n.add_argument("--json", action="store_true")
    add("jobs", cmd_jobs, "list jobs on storage")
    f = add("flower", cmd_flower, "Flower UI on the configured broker (credentials required)")
    f.add_argument("--port", type=int, default=5555)
    f.add_argument("--address", default="127.0.0.1")
    f.add_argument("--user")
    f.add_argument("--password")
    f.add_argument("--no-auth", action="store_true")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        code = args.fn(args)
    except DistillqError as e:
        print(f"distillq {args.cmd}: {e}", file=sys.stderr)
        code = EXIT_FAILED
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
