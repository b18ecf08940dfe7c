"""distillq: distill large language models into small ones over Celery queues on Redis.

The project's folders are mapped into this namespace (``pyproject.toml``, ``package-dir``):
``distillq.app``, ``distillq.tasks``, ``distillq.workers``, ``distillq.core``,
``distillq.storage``; ``distillq.errors`` lives here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distillq.app.api import Client, Job

__all__ = ["Client", "Job"]


def __getattr__(name: str) -> Any:
    # Loaded on first use: `python -m distillq status` and every worker import this package,
    # and the API pulls in the CLI's layers (still no torch: app/api.py imports inside calls).
    if name in __all__:
        from distillq.app import api

        return getattr(api, name)
    raise AttributeError(f"module 'distillq' has no attribute {name!r}")
