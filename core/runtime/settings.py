"""One typed, frozen settings object: environment (``DISTILLQ_*``) overridden by CLI flags."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from distillq import typed
from distillq.errors import DistillqError

DEFAULT_STORAGE = "./distillq-data"
QUEUES = ("teacher", "student")


@dataclass(frozen=True)
class Settings:
    """Where the broker and storage are, and how workers run. Read once, passed down."""

    broker_url: str = ""
    """Redis URL for queues (``redis[s]://[user:password@]host:port/db``); empty: none configured."""
    result_backend: str = ""
    """Redis URL for task results and chord counters; empty: same as ``broker_url``."""
    sentinel_master: str = ""
    """Master name the sentinels of a ``sentinel://h1:26379;sentinel://h2:26379`` URL monitor."""
    storage: Path = Path(DEFAULT_STORAGE)
    """Shared storage root; every node must see the same files here."""
    redis_tls_ca: str = ""
    """CA certificate (PEM) that signed the Redis server's certificate; empty: the system CAs."""
    redis_tls_cert: str = ""
    """Client certificate (PEM) for Redis servers that demand one (``tls-auth-clients yes``)."""
    redis_tls_key: str = ""
    """Private key of ``redis_tls_cert``; empty: the key is inside the certificate file."""
    visibility_timeout: int = 4 * 3600
    """Seconds before Redis re-delivers an unacknowledged task; longer than every hard limit."""
    task_time_limit: int = 3 * 3600
    """Hard limit on one task, seconds; the default for both queues."""
    task_soft_time_limit: int = 3 * 3600 - 300
    """Soft limit on one task, seconds (raises inside the task so it can clean up)."""
    teacher_time_limit: int | None = None
    """Hard limit on a ``teacher`` queue task (one shard), seconds; unset: ``task_time_limit``."""
    teacher_soft_time_limit: int | None = None
    """Soft limit on a ``teacher`` queue task; unset: ``task_soft_time_limit``."""
    student_time_limit: int | None = None
    """Hard limit on a ``student`` queue task (a replica, merge or finalize); unset: global."""
    student_soft_time_limit: int | None = None
    """Soft limit on a ``student`` queue task; unset: ``task_soft_time_limit``."""
    result_expires: int = 7 * 24 * 3600
    """Seconds results (and chord state) stay in Redis; longer than a job."""
    finished_expires: int = 3600
    """Seconds a job's keys (attempt counts, task results) stay in Redis once it is done."""
    max_attempts: int = 3
    """Deliveries of one task before it is recorded as failed instead of retried."""
    heartbeat_seconds: int = 10
    """Interval of a worker's node heartbeat in Redis; the key lives three intervals."""

    def __post_init__(self) -> None:
        # Absolute from here on: paths written into job records and reports must load from
        # any directory, and every process of a node must mean the same place.
        object.__setattr__(self, "storage", Path(self.storage).expanduser().resolve())
        for queue in (None, *QUEUES):
            soft, hard = self.time_limits(queue)
            prefix = f"DISTILLQ_{(queue or 'task').upper()}"
            if soft >= hard:
                raise DistillqError(
                    f"{prefix}_SOFT_TIME_LIMIT ({soft}) must be below {prefix}_TIME_LIMIT ({hard}); lower it"
                )
            if self.visibility_timeout <= hard:
                raise DistillqError(
                    f"DISTILLQ_VISIBILITY_TIMEOUT ({self.visibility_timeout}) must exceed "
                    f"{prefix}_TIME_LIMIT ({hard}), or Redis re-delivers tasks that are still running; raise it"
                )
        sentinels = [n for n in ("broker_url", "result_backend") if self._sentinel(n)]
        if sentinels and not self.sentinel_master:
            raise DistillqError(
                f"DISTILLQ_{sentinels[0].upper()} names sentinels but DISTILLQ_SENTINEL_MASTER "
                "is not set; set it to the master name they monitor (`sentinel monitor NAME ...`)"
            )
        if self.sentinel_master and not self._sentinel("broker_url"):
            raise DistillqError(
                "DISTILLQ_SENTINEL_MASTER is set but DISTILLQ_BROKER_URL is not a sentinel:// "
                "URL; use sentinel://host:26379;sentinel://host2:26379, or unset it"
            )
        if self.redis_tls_key and not self.redis_tls_cert:
            raise DistillqError(
                "DISTILLQ_REDIS_TLS_KEY is set without DISTILLQ_REDIS_TLS_CERT; set both"
            )
        # The TLS options travel inside the rediss:// URLs, where redis-py, kombu (broker) and
        # Celery's result backend all read them: every client of these settings gets the same.
        for name in ("broker_url", "result_backend"):
            url = getattr(self, name)
            object.__setattr__(self, name, self._with_tls(url, f"DISTILLQ_{name.upper()}"))

    def _sentinel(self, name: str) -> bool:
        return str(getattr(self, name)).startswith("sentinel://")

    def time_limits(self, queue: str | None = None) -> tuple[int, int]:
        """(soft, hard) time limit in seconds of a task on ``queue`` (None: the global default)."""
        soft = getattr(self, f"{queue}_soft_time_limit") if queue else None
        hard = getattr(self, f"{queue}_time_limit") if queue else None
        return (
            self.task_soft_time_limit if soft is None else soft,
            self.task_time_limit if hard is None else hard,
        )

    def _with_tls(self, url: str, var: str) -> str:
        tls = {
            "ssl_ca_certs": self.redis_tls_ca,
            "ssl_certfile": self.redis_tls_cert,
            "ssl_keyfile": self.redis_tls_key,
        }
        parts = urlsplit(url)
        if parts.scheme != "rediss":
            if url and any(tls.values()):
                raise DistillqError(
                    f"DISTILLQ_REDIS_TLS_* is set but {var} is not a rediss:// URL; use rediss://host:port/db"
                )
            return url
        # Verify the server unless the URL says otherwise (kombu alone would not: it defaults
        # to ssl_cert_reqs=none for a bare rediss:// URL); DISTILLQ_REDIS_TLS_* win over the URL.
        query = {"ssl_cert_reqs": "required", **dict(parse_qsl(parts.query))}
        query.update({k: v for k, v in tls.items() if v})
        return urlunsplit(parts._replace(query=urlencode(query, safe="/")))

    @property
    def backend_url(self) -> str:
        return self.result_backend or self.broker_url

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``DISTILLQ_<FIELD>`` variables, then non-None ``overrides`` on top."""
        from pydantic import ValidationError  # here: `--help` does not read settings

        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"DISTILLQ_{f.name.upper()}")
            if raw is not None and raw != "":
                values[f.name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return typed.build(cls, values)
        except ValidationError as e:
            err = e.errors()[0]
            name = f"DISTILLQ_{str(err['loc'][0]).upper()}"
            raise DistillqError(
                f"{name}={err['input']!r} is not a whole number; set it to one"
                if err["type"].startswith("int")
                else f"{name}={err['input']!r}: {err['msg']}; fix it"
            ) from None

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_env(self) -> dict[str, str]:
        """The ``DISTILLQ_*`` variables that reproduce these settings in a child process."""
        return {f"DISTILLQ_{k.upper()}": str(v) for k, v in asdict(self).items() if v is not None}
