"""Redis with Sentinel on this machine: a primary, a replica and three sentinels, each a real
redis-server process on a free local port. `distillq up --sentinel` and the failover tests use
it; a team's own cluster runs the same topology on three machines (docker/compose.yaml, ha).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis

from distillq.errors import BrokerError
from distillq.workers.redis_server import EmbeddedRedis, free_port, redis_binary

MASTER = "distillq"


class RedisHA:
    """``url`` (``sentinel://...;...``) and ``MASTER`` are what clients need; ``kill_primary``
    SIGKILLs the current primary, as a dead machine would, and ``rejoin`` brings it back as a
    replica of whichever server the sentinels promoted."""

    def __init__(
        self,
        workdir: Path,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 10_000,
        detach: bool = False,
    ) -> None:
        self.workdir = workdir
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.detach = detach
        primary = EmbeddedRedis(workdir / "redis-a")
        replica = EmbeddedRedis(
            workdir / "redis-b", extra=("--replicaof", "127.0.0.1", str(primary.port))
        )
        self.servers = [primary, replica]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return ";".join(f"sentinel://127.0.0.1:{p}" for p in self.sentinel_ports)

    @property
    def pids(self) -> list[int]:
        procs = [s.proc for s in self.servers] + self.sentinels
        return [p.pid for p in procs if p is not None]

    def start(self) -> RedisHA:
        for server in self.servers:
            server.start(detach=self.detach)
        first = self.servers[0].port
        for port in self.sentinel_ports:
            d = self.workdir / f"sentinel-{port}"
            d.mkdir(parents=True, exist_ok=True)
            conf = d / "sentinel.conf"  # sentinels rewrite their file: one each, writable
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {d}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {first} 2\n"
                f"sentinel down-after-milliseconds {MASTER} {self.down_after_ms}\n"
                f"sentinel failover-timeout {MASTER} {self.failover_timeout_ms}\n"
                f"sentinel parallel-syncs {MASTER} 1\n"
            )
            log = (d / "sentinel.log").open("ab")
            self.sentinels.append(
                subprocess.Popen(
                    [redis_binary(), str(conf), "--sentinel"],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=self.detach,
                )
            )
        self._wait(lambda: self._synced(self.servers[1]), 20, "the replica to sync")
        self._wait(lambda: self._replicas_seen() >= 1, 20, "the sentinels to see the replica")
        return self

    def _synced(self, server: EmbeddedRedis) -> bool:
        try:
            info = self._ask(server.port).info("replication")
        except (redis.RedisError, OSError):
            return False
        return info.get("master_link_status") == "up"

    def _ask(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1)

    def _replicas_seen(self) -> int:
        try:
            return int(self._ask(self.sentinel_ports[0]).sentinel_master(MASTER)["num-slaves"])
        except (redis.RedisError, OSError, KeyError):
            return 0

    def primary(self) -> EmbeddedRedis:
        """The server the sentinels name as primary now."""
        for port in self.sentinel_ports:
            try:
                _, p = self._ask(port).sentinel_get_master_addr_by_name(MASTER)
            except (redis.RedisError, OSError, TypeError):
                continue
            for server in self.servers:
                if server.port == int(p):
                    return server
        raise BrokerError(f"no sentinel of {self.url} names a primary for {MASTER!r}")

    def cut_replication(self) -> None:
        """From now until the next failover the replicas get no more of the primary's writes
        (they reconnect with a wrong password and are refused), so killing the primary loses
        them, as asynchronous replication may: for drills that need the loss to happen."""
        primary = self.primary()
        for server in self.servers:
            if server is not primary:
                self._ask(server.port).config_set("masterauth", "cut-by-a-drill")
        self._ask(primary.port).client_kill_filter(_type="replica")

    def kill_primary(self) -> EmbeddedRedis:
        """SIGKILL the primary (no shutdown, nothing flushed); return it."""
        dead = self.primary()
        if dead.proc is not None:
            dead.proc.send_signal(signal.SIGKILL)
            dead.proc.wait()
        return dead

    def wait_promoted(self, dead: EmbeddedRedis, timeout: float = 60) -> EmbeddedRedis:
        """Wait until the sentinels name another server as primary and it takes writes."""

        def promoted() -> bool:
            try:
                p = self.primary()
                return p is not dead and bool(self._ask(p.port).set("distillq:ha:probe", "1"))
            except (BrokerError, redis.RedisError, OSError):
                return False

        self._wait(promoted, timeout, "a replica to be promoted")
        new = self.primary()
        self._ask(new.port).config_set("masterauth", "")  # undo cut_replication, if it was
        return new

    def rejoin(self, dead: EmbeddedRedis, timeout: float = 60) -> None:
        """Start ``dead`` again as a replica of the current primary; wait until it is in sync."""
        primary = self.primary()
        dead.extra = ("--replicaof", "127.0.0.1", str(primary.port))
        dead.start(detach=self.detach)

        self._wait(
            lambda: self._synced(dead), timeout, f"redis on port {dead.port} to sync as a replica"
        )
        self._wait(lambda: self._replicas_seen() >= 1, timeout, "the sentinels to see it")

    def _wait(self, ok: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ok():
                return
            time.sleep(0.1)
        raise BrokerError(f"timed out after {timeout:.0f} s waiting for {what}; see {self.workdir}")

    def stop(self) -> None:
        for proc in self.sentinels:
            if proc.poll() is None:
                proc.terminate()
        for server in self.servers:
            server.stop()
        for proc in self.sentinels:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)

    def __enter__(self) -> RedisHA:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
