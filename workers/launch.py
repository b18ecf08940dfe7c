"""Start workers: this process as a Celery worker, or worker subprocesses for local clusters."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery import signals

from distillq.core import faults
from distillq.core.runtime import broker
from distillq.core.runtime.settings import Settings
from distillq.tasks.base import note_memory_baseline
from distillq.tasks.celery_app import app, configure, settings_of
from distillq.workers import devices, filing, lifeline
from distillq.workers.node import Heartbeat, node_info
from distillq.workers.reaper import Reaper

log = logging.getLogger(__name__)

_heartbeat: Heartbeat | None = None
_reaper: Reaper | None = None


def default_queues(has_gpu: bool) -> list[str]:
    """GPU nodes prefer teacher work, CPU nodes student work (docs/DESIGN.md §7)."""
    return ["teacher", "student"] if has_gpu else ["student", "teacher"]


def worker_argv(queues: list[str], concurrency: int, hostname: str, loglevel: str) -> list[str]:
    # prefork: each task runs in a child forked after the app is configured; CUDA is touched
    # only in the children. -E sends task events for Flower.
    return [
        "worker",
        "-Q",
        ",".join(queues),
        "-c",
        str(concurrency),
        "-P",
        "prefork",
        "-E",
        "-n",
        hostname,
        "-l",
        loglevel,
        "--without-mingle",
        "--without-gossip",
    ]


def run_worker(
    settings: Settings,
    queues: list[str],
    concurrency: int,
    threads: int,
    hostname: str | None,
    loglevel: str = "INFO",
    device: str = "auto",
    gpus: list[str] | None = None,
) -> None:
    """Run a Celery worker in this process until it is stopped (SIGTERM: warm shutdown).

    ``device``/``gpus``: each pool child's device (``workers.devices``)."""
    devices.check(device, gpus or [])
    broker.ping(settings.broker_url, settings.sentinel_master)
    configure(settings)
    filing.install()
    app.conf.distillq_worker = {
        "threads": threads,
        "queues": queues,
        "concurrency": concurrency,
        "device": device,
        "gpus": gpus or [],
    }
    name = hostname or f"{'-'.join(queues)}@{socket.gethostname()}-{os.getpid()}"
    app.worker_main(worker_argv(queues, concurrency, name, loglevel))


@signals.worker_process_init.connect
def _child_threads(**_: Any) -> None:
    # A forked child must not share the parent's Redis sockets (the heartbeat thread uses them).
    broker.client.cache_clear()
    broker.quick_client.cache_clear()
    # Its own device: set before torch (or anything) can initialise CUDA in this child.
    w = app.conf.get("distillq_worker", {})
    from billiard.process import current_process

    index = int(getattr(current_process(), "index", 0) or 0)
    # A pool child never outlives its worker: SIGKILLed, the worker could not stop it.
    lifeline.die_with_parent(signal.SIGKILL)
    os.environ.update(devices.assign(w.get("device", "auto"), w.get("gpus", []), index).env)
    # Each forked child gets its share of the cores: cores / concurrency torch threads.
    import torch  # here: the worker's main process never needs torch

    threads = int(w.get("threads", 0))
    if threads > 0:
        torch.set_num_threads(threads)


@signals.worker_init.connect
def _start_heartbeat(sender: Any = None, **_: Any) -> None:
    """Before the consumer starts: hand back what a previous run of this node left unacked,
    then beat (a node must be seen alive before it holds any delivery, or peers would reap it)."""
    global _heartbeat, _reaper
    s = settings_of(app)
    with contextlib.suppress(Exception):
        note_memory_baseline()  # an OOM kill is told from the kills the cgroup had before
    w = app.conf.get("distillq_worker", {})
    hostname = getattr(sender, "hostname", None) or socket.gethostname()
    info = node_info(hostname, w.get("queues", []), w.get("concurrency", 1))
    r = broker.quick_client(s.broker_url, s.sentinel_master)
    _reaper = Reaper(app, r, hostname)
    with contextlib.suppress(Exception):
        _reaper.recover_own()
    _heartbeat = Heartbeat(r, info, s.heartbeat_seconds, on_beat=_reaper.sweep)
    _heartbeat.start()


@signals.task_received.connect
def _record_delivery(request: Any = None, **_: Any) -> None:
    # In the worker's main process, as soon as the message is taken: from here until the ack
    # the tag is this node's, and peers hand it back if this node dies.
    if _reaper is not None and request is not None:
        tag = getattr(request.message, "delivery_tag", None)
        if tag:
            faults.hit(f"received:{request.name}")
            try:
                _reaper.record(str(tag))
            except Exception as e:  # Redis away: the next sweep records it (Reaper.flush)
                log.warning(
                    "delivery %s not recorded yet (%s); recorded when Redis is back", tag, e
                )


@signals.worker_shutdown.connect
def _stop_heartbeat(**_: Any) -> None:
    if _heartbeat is not None:
        _heartbeat.stop()
    if _reaper is not None:
        _reaper.close()


def spawn_worker(
    settings: Settings,
    queues: list[str],
    log_file: Path,
    concurrency: int = 1,
    threads: int = 1,
    hostname: str | None = None,
    extra_env: dict[str, str] | None = None,
    preexec_fn: Callable[[], Any] | None = None,
    tie: bool = False,
) -> subprocess.Popen[bytes]:
    """Start ``distillq worker`` as a child process in its own process group.

    ``tie``: the worker is killed when this process dies, however it dies (``lifeline``); for
    a starter whose workers must not outlive it (the demo), not for `up`'s detached cluster.
    ``extra_env`` and ``preexec_fn`` (resource limits) are for drills and fault-injection tests.
    """
    cmd = [
        sys.executable,
        "-m",
        "distillq",
        "worker",
        "-Q",
        ",".join(queues),
        "-c",
        str(concurrency),
        "--threads",
        str(threads),
    ]
    if hostname:
        cmd += ["-n", hostname]
    env = {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    log_file.parent.mkdir(parents=True, exist_ok=True)
    out = log_file.open("ab")
    return subprocess.Popen(
        cmd,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=lifeline.tied(then=preexec_fn) if tie else preexec_fn,
    )


def spawn_flower(
    settings: Settings, port: int, user: str, password: str, log_file: Path
) -> subprocess.Popen[bytes]:
    """Start `distillq flower` (basic auth) as a child process in its own process group."""
    cmd = [sys.executable, "-m", "distillq", "flower", "--port", str(port)]
    env = {
        **os.environ,
        **settings.to_env(),
        "DISTILLQ_FLOWER_USER": user,
        "DISTILLQ_FLOWER_PASSWORD": password,
    }
    log_file.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        cmd, env=env, stdout=log_file.open("ab"), stderr=subprocess.STDOUT, start_new_session=True
    )


def stop_process_group(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM the worker's main process (warm shutdown: the running task finishes), then
    SIGKILL its whole group if it lingers past ``timeout``.

    Only the main process gets SIGTERM: sent to the group it would also hit the pool
    children and kill the running task mid-write.
    """
    stop_process_groups([proc], timeout)


def stop_process_groups(procs: list[subprocess.Popen[bytes]], timeout: float = 20.0) -> None:
    """``stop_process_group`` for several at once, under one deadline: all are asked first,
    so stopping N workers takes ``timeout`` at most, not N times it."""
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.0, deadline - time.monotonic()))
    for proc in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers: pool children of a dead parent
        proc.wait()
