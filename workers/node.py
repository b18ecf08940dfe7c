"""This node's resources and its heartbeat in the Redis node registry."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil

from distillq.core.runtime.registry import FORGET_AFTER, GONE_AFTER
from distillq.storage import keys, records
from distillq.storage.node_records import Gpu, NodeInfo, NodeLoad

log = logging.getLogger(__name__)


def _nvidia_smi(query: str) -> list[list[str]]:
    """Rows of ``nvidia-smi --query-gpu=<query>`` (empty without a GPU). nvidia-smi, not
    torch.cuda: the worker's main process must not initialise CUDA before it forks."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run(
            [smi, f"--query-gpu={query}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [
        [x.strip() for x in line.rsplit(",", query.count(","))] for line in out.strip().splitlines()
    ]


def gpus() -> list[Gpu]:
    return [
        Gpu(name=name, memory_mb=int(float(mem))) for name, mem in _nvidia_smi("name,memory.total")
    ]


def _gpu_used_mb() -> list[int]:
    return [int(float(used)) for (used,) in _nvidia_smi("memory.used")]


def node_load(pid: int) -> NodeLoad:
    """CPU of the machine since the last call, RSS of the worker ``pid`` and its children."""
    rss = 0
    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(pid)
        for p in [proc, *proc.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                rss += p.memory_info().rss
    return NodeLoad(
        cpu_percent=round(psutil.cpu_percent(interval=None) * (psutil.cpu_count() or 1), 1),
        rss_mb=round(rss / 2**20, 1),
        gpu_used_mb=_gpu_used_mb(),
    )


def node_info(hostname: str, queues: list[str], concurrency: int) -> NodeInfo:
    from importlib.metadata import version  # once per node start, for its registry entry

    return NodeInfo(
        hostname=hostname,
        host=socket.gethostname(),
        pid=os.getpid(),
        cpus=psutil.cpu_count() or 1,
        ram_gb=round(psutil.virtual_memory().total / 2**30, 1),
        gpus=gpus(),
        queues=queues,
        concurrency=concurrency,
        version=version("distillq"),
        started_at=time.time(),
    )


WARN_EVERY = 60.0
"""Seconds between a node's warnings that the broker is still unreachable."""


class Heartbeat:
    """Refresh this node's registry entry every ``interval`` s.

    A node that stops beating shows as ``gone`` after GONE_AFTER intervals and disappears
    after FORGET_AFTER (the key's TTL): users see that a node died before it vanishes.
    """

    def __init__(
        self,
        redis_client: Any,
        info: NodeInfo,
        interval: int,
        on_beat: Callable[[], Any] | None = None,
    ) -> None:
        self.r, self.info, self.interval, self.on_beat = redis_client, info, interval, on_beat
        self.streak = 0  # beats in a row that reached Redis
        self._warned_at = 0.0
        self._down_since: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="distillq-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.beat()
                self.streak += 1
                self._down_since = None
                # After Redis was away, every peer looks gone until it beats again: act on
                # others' heartbeats only once this node has itself beaten for a full window.
                if self.on_beat is not None and self.streak > GONE_AFTER:
                    self.on_beat()
            except Exception as e:  # Redis away for a while: keep beating once it is back
                if self.streak or time.time() - self._warned_at >= WARN_EVERY:
                    # Once when it goes, then once a minute: an outage of hours must not fill
                    # the log (Celery's consumer backs off its reconnects on its own).
                    down = time.time() - (self._down_since or time.time())
                    log.warning(
                        "heartbeat of %s: broker unreachable%s: %s (retrying)",
                        self.info.hostname,
                        f" for {down:.0f} s" if down >= 1 else "",
                        e,
                    )
                    self._warned_at = time.time()
                self._down_since = self._down_since or time.time()
                self.streak = 0
            self._stop.wait(self.interval)

    def beat(self) -> None:
        info = dataclasses.replace(
            self.info,
            heartbeat_at=time.time(),
            interval=self.interval,
            load=node_load(self.info.pid),
        )
        self.r.set(
            keys.node(info.hostname),
            json.dumps(records.to_json(info)),
            ex=self.interval * FORGET_AFTER,
        )

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(Exception):
            self.r.delete(keys.node(self.info.hostname))
