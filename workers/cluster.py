"""`distillq up` / `down`: a local cluster (embedded Redis unless one is configured, N workers).

Its state (pids, broker URL) lives in ``<storage>/cluster.json``, so later commands on this
machine find the broker without any variable set.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import time
from pathlib import Path
from typing import Any

from distillq.core.runtime.broker import redacted
from distillq.core.runtime.settings import Settings
from distillq.errors import DistillqError
from distillq.storage.atomic import write_json
from distillq.workers.launch import spawn_flower, spawn_worker
from distillq.workers.redis_ha import MASTER, RedisHA
from distillq.workers.redis_server import EmbeddedRedis


def _state_file(storage: Path) -> Path:
    return storage / "cluster.json"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def _cluster(storage: Path) -> dict[str, Any]:
    """The state of a running local cluster on this storage, or {}."""
    f = _state_file(storage)
    if not f.exists():
        return {}
    state: dict[str, Any] = json.loads(f.read_text())
    pids = state.get("redis_pids") or []
    return state if not pids or any(alive(p) for p in pids) else {}


def cluster_broker(storage: Path) -> str:
    """The broker of a running local cluster on this storage, or ''."""
    return str(_cluster(storage).get("broker_url", ""))


def with_cluster_broker(s: Settings) -> Settings:
    """``s``, or where it names no broker, ``s`` on a running `distillq up` cluster's broker."""
    if s.broker_url:
        return s
    state = _cluster(s.storage)
    return s.with_(
        broker_url=state.get("broker_url") or None, sentinel_master=state.get("sentinel_master")
    )


def up(settings: Settings, workers: int, flower_port: int = 5555, sentinel: bool = False) -> str:
    """Start the cluster; with ``sentinel`` (and no broker configured) on a local Redis
    Sentinel topology (a primary, a replica, three sentinels) instead of one Redis."""
    storage = settings.storage
    if cluster_broker(storage) and _state_file(storage).exists():
        raise DistillqError(f"a local cluster is already up on {storage}; `distillq down` stops it")
    if sentinel and settings.broker_url:
        raise DistillqError(
            "--sentinel starts a local Sentinel topology, but DISTILLQ_BROKER_URL is set; "
            "unset it, or drop --sentinel to use that broker"
        )
    redis_pids: list[int] = []
    if sentinel:
        ha = RedisHA(storage / "redis-ha", detach=True).start()
        settings = settings.with_(broker_url=ha.url, sentinel_master=MASTER)
        redis_pids = ha.pids
    elif not settings.broker_url:
        redis = EmbeddedRedis(storage / "redis").start(detach=True)
        settings = settings.with_(broker_url=redis.url)
        redis_pids = [redis.proc.pid] if redis.proc else []
    cores = os.cpu_count() or 1
    procs = [
        spawn_worker(
            settings,
            ["student", "teacher"] if i % 2 else ["teacher", "student"],
            storage / "logs" / f"worker-{i}.log",
            threads=max(1, cores // workers),
            hostname=f"local{i}@%h",
        )
        for i in range(workers)
    ]
    user = os.environ.get("DISTILLQ_FLOWER_USER") or "distillq"
    password = os.environ.get("DISTILLQ_FLOWER_PASSWORD") or secrets.token_urlsafe(12)
    flower = spawn_flower(settings, flower_port, user, password, storage / "logs" / "flower.log")
    write_json(
        _state_file(storage),
        {
            "broker_url": settings.broker_url,
            "sentinel_master": settings.sentinel_master,
            "redis_pids": redis_pids,
            "worker_pids": [p.pid for p in procs],
            "flower_pid": flower.pid,
            "flower_url": f"http://127.0.0.1:{flower_port}",
            "flower_user": user,
            "flower_password": password,
            "started_at": time.time(),
        },
    )
    os.chmod(_state_file(storage), 0o600)  # it holds the Flower password
    ha_line = (
        f"  Redis Sentinel: master {MASTER!r}, primary + replica + 3 sentinels under "
        f"{storage / 'redis-ha'}\n"
        if sentinel
        else ""
    )
    return (
        f"cluster up: {workers} worker(s), broker {redacted(settings.broker_url)}, storage {storage}\n"
        f"{ha_line}"
        f"  Flower: http://127.0.0.1:{flower_port}  (user {user}, password {password})\n"
        f"  logs: {storage / 'logs'}\n  stop with: distillq down"
    )


def down(settings: Settings) -> str:
    f = _state_file(settings.storage)
    if not f.exists():
        return "no local cluster is up on this storage"
    state = json.loads(f.read_text())
    for pid in state["worker_pids"]:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)  # main process only: a warm shutdown
    deadline = time.time() + 30
    while time.time() < deadline and any(alive(p) for p in state["worker_pids"]):
        time.sleep(0.2)
    for pid in state["worker_pids"]:
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
    if state.get("flower_pid"):
        with contextlib.suppress(OSError):
            os.killpg(state["flower_pid"], signal.SIGTERM)
    for pid in state.get("redis_pids") or []:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    f.unlink()
    return f"cluster down ({len(state['worker_pids'])} worker(s) stopped)"
