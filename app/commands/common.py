"""What every subcommand shares: settings from the environment and flags, the Redis check,
and the flags that several commands take the same way.

Imports of the layers below sit inside each command: ``status`` must not pay for torch,
transformers and peft, which only some commands need (bench/cli_latency.py measures it).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, Protocol

from distillq.core.runtime.settings import Settings

Handler = Callable[[argparse.Namespace], int]


class Add(Protocol):
    """Registers a subcommand: ``add(name, handler, help, description="")``; returns its parser."""

    def __call__(
        self, name: str, fn: Handler, help: str, description: str = ""
    ) -> argparse.ArgumentParser: ...


def settings_from(args: argparse.Namespace) -> Settings:
    """Environment, then flags; with no broker configured, a running `distillq up` cluster's."""
    s = Settings.from_env(
        broker_url=getattr(args, "broker", None), storage=getattr(args, "storage", None)
    )
    from distillq.workers.cluster import with_cluster_broker

    return with_cluster_broker(s)


def ready(s: Settings) -> Settings:
    """``s`` after checking its Redis answers, with the Celery app configured from it."""
    from distillq.core.runtime import broker
    from distillq.tasks.celery_app import configure

    broker.ping(s.broker_url, s.sentinel_master)
    configure(s)
    return s


def job_and_settings(args: argparse.Namespace) -> tuple[Any, Settings]:
    """The job of ``args.job`` and the settings it was found with."""
    from distillq.core.job.jobs import load_job

    s = settings_from(args)
    return load_job(s.storage, args.job), s


def job_arg(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("job", help="job id, as `enqueue` printed it (`distillq jobs` lists them)")


def json_flag(sp: argparse.ArgumentParser, what: str) -> None:
    sp.add_argument("--json", action="store_true", help=f"print {what} as JSON")
