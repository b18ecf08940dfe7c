"""``distillq``: subcommands map to plain functions; user errors print one line and exit 1.

Imports of the layers below sit inside each command: ``status`` must not pay for torch,
transformers and peft, which only some commands need (bench/cli_latency.py measures it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from distillq.app.view import EXIT_FAILED, EXIT_TIMEOUT
from distillq.core.runtime.settings import Settings
from distillq.errors import DistillqError
from distillq.storage.layout import check_writable


def settings_from(args: argparse.Namespace) -> Settings:
    """Environment, then flags; with no broker configured, a running `distillq up` cluster's."""
    s = Settings.from_env(
        broker_url=getattr(args, "broker", None), storage=getattr(args, "storage", None)
    )
    if not s.broker_url:
        from distillq.workers.cluster import cluster_broker

        s = s.with_(broker_url=cluster_broker(s.storage))
    return s


def _ready(s: Settings) -> Settings:
    from distillq.core.runtime import broker
    from distillq.tasks.celery_app import configure

    broker.ping(s.broker_url)
    configure(s)
    return s


def cmd_worker(args: argparse.Namespace) -> int:
    from distillq.workers.devices import usable_gpus
    from distillq.workers.launch import default_queues, run_worker
    from distillq.workers.node import gpus

    s = settings_from(args)
    check_writable(s.storage)
    usable = usable_gpus(os.environ.get("CUDA_VISIBLE_DEVICES"), len(gpus()))
    on_gpu = bool(usable) and args.device != "cpu"
    queues = args.queues.split(",") if args.queues else default_queues(on_gpu)
    cores = os.cpu_count() or 1
    threads = args.threads or max(1, cores // args.concurrency)
    run_worker(
        s, queues, args.concurrency, threads, args.hostname, args.loglevel, args.device, usable
    )
    return 0


def cmd_enqueue(args: argparse.Namespace) -> int:
    from distillq.core.create import create_job
    from distillq.core.job.jobs import data_notes
    from distillq.core.job.spec import load_spec
    from distillq.tasks import pipeline
    from distillq.tasks.celery_app import app

    # The spec first: fixing a typo in it should not need a running Redis.
    spec = load_spec(Path(args.spec), args.set)
    s = _ready(settings_from(args))
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


def _job_and_redis(args: argparse.Namespace) -> tuple[Any, Any]:
    from distillq.core.job.jobs import load_job
    from distillq.core.runtime import broker

    s = settings_from(args)
    job = load_job(s.storage, args.job)
    try:
        broker.ping(s.broker_url)
        return job, broker.client(s.broker_url)
    except DistillqError:
        return job, None  # storage alone still tells what is done


def cmd_status(args: argparse.Namespace) -> int:
    from distillq.app.view import dumps, render
    from distillq.core.control.status import job_status

    job, r = _job_and_redis(args)
    st = job_status(job, r)
    print(dumps(st) if args.json else render(st))
    return EXIT_FAILED if st.state == "failed" else 0


def cmd_watch(args: argparse.Namespace) -> int:
    from distillq.app.view import follow
    from distillq.core.control.status import job_status

    job, r = _job_and_redis(args)
    return follow(lambda: job_status(job, r), args.interval, args.timeout)


def cmd_wait(args: argparse.Namespace) -> int:
    from distillq.core.control.status import job_status, pulse

    job, r = _job_and_redis(args)
    deadline = time.time() + args.timeout
    last_pulse, moved_at = "", time.time()
    while True:
        st = job_status(job, r)
        if (now := pulse(st)) != last_pulse:
            last_pulse, moved_at = now, time.time()
        if st.state == "done":
            print(f"job {job.id} done: {st.report}")
            return 0
        if st.state == "failed":
            for key, f in st.failures.items():
                print(f"job {job.id} failed: {key}: {f.error}", file=sys.stderr)
            return EXIT_FAILED
        if st.state == "cancelled":
            print(f"job {job.id} was cancelled", file=sys.stderr)
            return EXIT_FAILED
        if time.time() > deadline:
            print(
                f"job {job.id} not done after {args.timeout:.0f} s (state {st.state}); `distillq status {job.id}` shows where it is",
                file=sys.stderr,
            )
            for line in st.unheard:
                print(line, file=sys.stderr)
            return EXIT_TIMEOUT
        if args.stall and time.time() - moved_at > args.stall:
            print(
                f"job {job.id} has not moved for {args.stall:.0f} s (state {st.state}): no shard, "
                f"round or task progress; `distillq status {job.id}` shows where it is",
                file=sys.stderr,
            )
            for line in [*st.unheard, *st.waiting]:
                print(line, file=sys.stderr)
            return EXIT_TIMEOUT
        time.sleep(args.interval)


def cmd_resume(args: argparse.Namespace) -> int:
    import dataclasses

    from distillq.core.control import state as control
    from distillq.core.job.jobs import load_job
    from distillq.tasks import pipeline
    from distillq.tasks.celery_app import app

    s = _ready(settings_from(args))
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


def cmd_nodes(args: argparse.Namespace) -> int:
    from distillq.core.runtime import broker
    from distillq.core.runtime.registry import list_nodes

    s = settings_from(args)
    broker.ping(s.broker_url)
    nodes = list_nodes(broker.client(s.broker_url))
    if args.json:
        print(json.dumps([n.to_json() for n in nodes], indent=2))
        return 0
    print(
        f"{'node':<36} {'state':<5} {'queues':<16} {'cpus':>4} {'ram':>7} {'gpus':<24} "
        f"{'cpu now':>8} {'rss':>8} {'gpu mem':<12} {'beat':>6}"
    )
    for n in nodes:
        i, load = n.info, n.info.load
        g = ", ".join(f"{x.name} {x.memory_mb // 1024}G" for x in i.gpus) or "-"
        cpu = f"{load.cpu_percent:.0f}%" if load else "-"
        rss = f"{load.rss_mb / 1024:.2f}G" if load else "-"
        used = ", ".join(f"{m / 1024:.1f}G" for m in load.gpu_used_mb) if load else ""
        print(
            f"{i.hostname:<36} {n.state:<5} {','.join(i.queues):<16} {i.cpus:>4} {i.ram_gb:>6}G {g:<24} "
            f"{cpu:>8} {rss:>8} {used or '-':<12} {n.age_s:>5}s"
        )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from distillq.core.job.jobs import load_job
    from distillq.core.report import report

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


def cmd_export(args: argparse.Namespace) -> int:
    from distillq.app.view import run_hints
    from distillq.core.export.gguf import QUANTS
    from distillq.core.job.jobs import load_job
    from distillq.core.stages import export_finished

    job = load_job(settings_from(args).storage, args.job)
    quants = tuple(q.strip() for q in (args.quant or ",".join(QUANTS)).split(",") if q.strip())
    for q in quants:
        if q not in QUANTS:
            raise DistillqError(f"--quant {q!r} is not supported: choose from {', '.join(QUANTS)}")
    tracks = args.track or [s.name for s in job.spec.students]
    for name in tracks:
        job.spec.student(name)  # an unknown track fails here, before any work
    done = export_finished(job, tracks, quants)  # type: ignore[arg-type]
    failed = False
    for name, outputs in done.items():
        print(f"track {name}:")
        print(run_hints(outputs))
        failed |= "gguf_skipped" in outputs
    return EXIT_FAILED if failed else 0


def cmd_show(args: argparse.Namespace) -> int:
    from distillq.core.job.jobs import load_job
    from distillq.core.job.models import load_tokenizer
    from distillq.core.report.show import show

    job = load_job(settings_from(args).storage, args.job)
    t = job.spec.teacher
    ref = (t.tokenizer if t and t.tokenizer else None) or (
        t.model if t and not t.is_endpoint else job.spec.students[0].model
    )
    for s in show(job, args.shard, args.record, load_tokenizer(ref)):
        print(f"record {s.record_id} ({s.kind})")
        print("--- prompt\n" + s.prompt)
        print("--- response\n" + s.response)
        print("--- first targets: token  [teacher's top entries]")
        for token, entries in s.targets:
            tops = ", ".join(f"{t!r} {p:.2f}" for t, p in entries)
            print(f"  {token!r:<16} [{tops}]")
    return 0


def cmd_init_student(args: argparse.Namespace) -> int:
    from distillq.core.job.spec import local_model
    from distillq.core.student.init_student import init_student

    teacher = local_model(args.teacher, Path.cwd(), "teacher model")
    out, shape = init_student(
        teacher, Path(args.out), args.layers, args.hidden, args.from_teacher_layers
    )
    how = "initialised from the teacher's layers" if args.from_teacher_layers else "random init"
    print(
        f"student: {shape.layers} layers, hidden {shape.hidden}, {shape.heads} heads "
        f"({shape.kv_heads} key/value), MLP {shape.intermediate}, {how}, the teacher's tokenizer"
    )
    print(out)
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    from distillq.core.job.jobs import list_jobs

    for j in list_jobs(settings_from(args).storage):
        print(j)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from distillq.app.demo import enqueue_demo, run_demo

    if args.enqueue_only:
        print(enqueue_demo(_ready(settings_from(args)), quick=args.quick))
        return 0
    return run_demo(settings_from(args), quick=args.quick)


def cmd_up(args: argparse.Namespace) -> int:
    from distillq.workers.cluster import up

    print(up(settings_from(args), args.workers, args.flower_port))
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from distillq.workers.cluster import down

    print(down(settings_from(args)))
    return 0


def cmd_flower(args: argparse.Namespace) -> int:
    from distillq.tasks.celery_app import app

    _ready(settings_from(args))
    if args.password is not None:
        raise DistillqError(
            "flower --password puts the password in the process list, where every user of "
            "this node reads it: set DISTILLQ_FLOWER_PASSWORD or use --password-file"
        )
    user = args.user or os.environ.get("DISTILLQ_FLOWER_USER")
    password = os.environ.get("DISTILLQ_FLOWER_PASSWORD")
    if args.password_file:
        try:
            password = Path(args.password_file).read_text().strip()
        except OSError as e:
            raise DistillqError(
                f"flower --password-file {args.password_file}: cannot read it ({e.strerror}); "
                "give a readable file holding the password"
            ) from None
    argv = ["flower", f"--port={args.port}", f"--address={args.address}"]
    if user and password:
        argv.append(f"--basic-auth={user}:{password}")
    elif not args.no_auth:
        raise DistillqError(
            "Flower needs credentials: set DISTILLQ_FLOWER_USER and DISTILLQ_FLOWER_PASSWORD (or --no-auth on a trusted host)"
        )
    app.start(argv)
    return 0


class _Help(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default after its help text; an unset or off default goes unsaid
    (the help says what "unset" means)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is False
        if not unset and action.default != argparse.SUPPRESS and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--broker",
        help="Redis URL; unset: $DISTILLQ_BROKER_URL, else a running `distillq up` cluster's",
    )
    common.add_argument(
        "--storage", help="shared storage root; unset: $DISTILLQ_STORAGE, else ./distillq-data"
    )
    p = argparse.ArgumentParser(
        prog="distillq", description="Distill LLMs over Celery queues on Redis."
    )
    sub = p.add_subparsers(dest="cmd", required=True)

    def add(name: str, fn: Any, help: str, description: str = "") -> argparse.ArgumentParser:
        sp = sub.add_parser(
            name,
            parents=[common],
            help=help,
            description=description or help,
            formatter_class=_Help,
        )
        sp.set_defaults(fn=fn)
        return sp

    def job_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("job", help="job id, as `enqueue` printed it (`distillq jobs` lists them)")

    def json_flag(sp: argparse.ArgumentParser, what: str) -> None:
        sp.add_argument("--json", action="store_true", help=f"print {what} as JSON")

    d = add("demo", cmd_demo, "run the bundled demo job end to end on this machine")
    d.add_argument(
        "--quick", action="store_true", help="a smaller demo (fewer records), for smoke tests"
    )
    d.add_argument(
        "--enqueue-only",
        action="store_true",
        help="prepare the demo on storage and submit it to running workers",
    )
    u = add(
        "up",
        cmd_up,
        "start a local cluster: embedded Redis (unless configured), N workers and Flower",
        "Start a local cluster in the background: an embedded Redis unless a broker is "
        "configured, N workers, and Flower on --flower-port with generated credentials "
        "(printed). `distillq down` stops it.",
    )
    u.add_argument("--workers", type=int, default=2, help="worker processes to start")
    u.add_argument("--flower-port", type=int, default=5555, help="port of the Flower UI")
    add("down", cmd_down, "stop the local cluster started by `up`")
    w = add("worker", cmd_worker, "run a worker on this node")
    w.add_argument(
        "-Q",
        "--queues",
        help="comma-separated queues in order of preference; unset: teacher,student on a GPU "
        "node, student,teacher on a CPU node",
    )
    w.add_argument(
        "-c",
        "--concurrency",
        type=int,
        default=1,
        help="worker processes; on a GPU node, child i gets GPU i mod (GPUs): -c 4 on 4 GPUs "
        "is one process per GPU",
    )
    w.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="where the worker computes: auto (a GPU where the node has one), cpu, or cuda "
        "(refused on a node without a GPU)",
    )
    w.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads per process; 0: cores / concurrency",
    )
    w.add_argument("-n", "--hostname", help="node name; unset: <queues>@<host>-<pid>")
    w.add_argument("-l", "--loglevel", default="INFO", help="log level of the worker")
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
    ini = add(
        "init-student",
        cmd_init_student,
        "write a smaller student of the teacher's architecture, with its tokenizer",
    )
    ini.add_argument("teacher", help="the teacher's model directory")
    ini.add_argument("--out", required=True, help="a new directory for the student")
    ini.add_argument("--layers", type=int, help="student depth (default: half the teacher's)")
    ini.add_argument(
        "--hidden", type=int, help="student width, a multiple of the head size (default: same)"
    )
    ini.add_argument(
        "--from-teacher-layers",
        action="store_true",
        help="start from every other teacher layer (evenly spread), embeddings and head copied "
        "(cut to the width)",
    )
    sh = add(
        "show",
        cmd_show,
        "print one record of a teacher cache shard: prompt, response, the teacher's targets",
    )
    job_arg(sh)
    sh.add_argument("--shard", type=int, required=True, help="shard number (-1: held-out slice)")
    sh.add_argument("--record", type=int, required=True, help="dataset record id (0-based)")
    rp = add("report", cmd_report, "rewrite and print a finished job's report")
    job_arg(rp)
    json_flag(rp, "the report")
    ex = add(
        "export",
        cmd_export,
        "write a finished job's students as GGUF (llama.cpp) with an Ollama Modelfile",
    )
    job_arg(ex)
    ex.add_argument(
        "--track", action="append", help="a student track to export (repeatable); unset: all"
    )
    ex.add_argument(
        "--gguf", action="store_true", help="GGUF files + Modelfile (the default format)"
    )
    ex.add_argument("--quant", help="comma-separated GGUF types; unset: f16,q8_0")
    n = add("nodes", cmd_nodes, "registered worker nodes and their resources")
    json_flag(n, "the nodes")
    add("jobs", cmd_jobs, "list jobs on storage")
    f = add("flower", cmd_flower, "Flower UI on the configured broker (credentials required)")
    f.add_argument("--port", type=int, default=5555, help="port to listen on")
    f.add_argument("--address", default="127.0.0.1", help="address to listen on")
    f.add_argument("--user", help="basic-auth user; unset: $DISTILLQ_FLOWER_USER")
    f.add_argument(
        "--password-file",
        help="file holding the basic-auth password; unset: $DISTILLQ_FLOWER_PASSWORD",
    )
    f.add_argument("--password", help=argparse.SUPPRESS)  # refused: it would show in `ps`
    f.add_argument("--no-auth", action="store_true", help="no credentials (only on a trusted host)")
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
