"""One typed, frozen settings object: environment (``DISTILLQ_*``) overridden by CLI flags."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from app.errors import DistillqError

DEFAULT_STORAGE = "./distillq-data"


@dataclass(frozen=True)
class Settings:
    """Where the broker and storage are, and how workers run. Read once, passed down."""

    broker_url: str = ""
    """Redis URL for queues (``redis://[:password@]host:port/db`` or ``rediss://``); empty: none configured."""
    result_backend: str = ""
    """Redis URL for task results and chord counters; empty: same as ``broker_url``."""
    storage: Path = Path(DEFAULT_STORAGE)
    """Shared storage root; every node must see the same files here."""
    visibility_timeout: int = 4 * 3600
    """Seconds before Redis re-delivers an unacknowledged task; longer than ``task_time_limit``."""
    task_time_limit: int = 3 * 3600
    """Hard limit on one task, seconds."""
    task_soft_time_limit: int = 3 * 3600 - 300
    """Soft limit on one task, seconds (raises inside the task so it can clean up)."""
    result_expires: int = 7 * 24 * 3600
    """Seconds results (and chord state) stay in Redis; longer than a job."""
    max_attempts: int = 3
    """Deliveries of one task before it is recorded as failed instead of retried."""
    heartbeat_seconds: int = 10
    """Interval of a worker's node heartbeat in Redis; the key lives three intervals."""

    def __post_init__(self) -> None:
        if self.task_soft_time_limit >= self.task_time_limit:
            raise DistillqError(
                "DISTILLQ_TASK_SOFT_TIME_LIMIT must be below DISTILLQ_TASK_TIME_LIMIT; lower it"
            )
        if self.visibility_timeout <= self.task_time_limit:
            raise DistillqError(
                "DISTILLQ_VISIBILITY_TIMEOUT must exceed DISTILLQ_TASK_TIME_LIMIT, or Redis "
                "re-delivers tasks that are still running; raise it"
            )

    @property
    def backend_url(self) -> str:
        return self.result_backend or self.broker_url

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``DISTILLQ_<FIELD>`` variables, then non-None ``overrides`` on top."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"DISTILLQ_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            values[f.name] = _convert(f.name, raw, f.type)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "storage" in values:
            values["storage"] = Path(values["storage"])
        return cls(**values)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_env(self) -> dict[str, str]:
        """The ``DISTILLQ_*`` variables that reproduce these settings in a child process."""
        return {f"DISTILLQ_{k.upper()}": str(v) for k, v in asdict(self).items()}


def _convert(name: str, raw: str, typ: Any) -> Any:
    if typ in (int, "int"):
        try:
            return int(raw)
        except ValueError:
            raise DistillqError(
                f"DISTILLQ_{name.upper()}={raw!r} is not a whole number; set it to one"
            ) from None
    return raw
