"""The Celery app: queues ``teacher`` and ``student``, routes, and the settings that matter.

Configured explicitly by ``configure(settings)`` (the CLI does this), or from ``DISTILLQ_*``
environment variables when Celery first needs its config (``celery -A app.celery``).
"""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from celery import Celery
from kombu import Queue

from app.settings import Settings

TEACHER_TASKS = ("distillq.teacher_shard", "distillq.teacher_eval")
STUDENT_TASKS = ("distillq.train_replica", "distillq.merge_round", "distillq.finalize")


def celery_config(s: Settings) -> dict[str, Any]:
    """Every Celery setting distillq relies on, each with the reason it is set."""
    # One visibility timeout for broker and result backend, longer than the hard time limit:
    # Redis re-delivers an unacknowledged task after it, so a shorter one would run a slow
    # task twice at once (Settings.__post_init__ enforces the order).
    transport = {"visibility_timeout": s.visibility_timeout}
    return {
        "broker_url": s.broker_url,
        "result_backend": s.backend_url,
        "task_queues": (Queue("teacher"), Queue("student")),
        "task_default_queue": "student",
        "task_routes": {
            **{t: {"queue": "teacher"} for t in TEACHER_TASKS},
            **{t: {"queue": "student"} for t in STUDENT_TASKS},
        },
        # Acknowledge after the task ran, not when it was received: a task whose worker dies
        # is delivered again instead of lost. Every task is idempotent because of this.
        "task_acks_late": True,
        # ...and a task whose worker process was killed (OOM, SIGKILL) is re-queued rather than
        # failed; tasks/base.py caps the attempts so a poison task cannot loop forever.
        "task_reject_on_worker_lost": True,
        # Take one task at a time: a worker holding a reserved second task would hide it from
        # idle workers for the whole length of the first (shards run for minutes).
        "worker_prefetch_multiplier": 1,
        "broker_transport_options": transport,
        "result_backend_transport_options": transport,
        # JSON only: a pickled message could execute code on every worker.
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # Chord counters and results must outlive a job, or late rounds never merge.
        "result_expires": s.result_expires,
        "task_time_limit": s.task_time_limit,
        "task_soft_time_limit": s.task_soft_time_limit,
        # If the broker connection drops, cancel running late-ack tasks: Redis will re-deliver
        # them anyway, and finishing them would only produce a duplicate.
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "broker_connection_retry_on_startup": True,
        # STARTED state and task events: `distillq status` and Flower show running tasks.
        "task_track_started": True,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "imports": ("tasks.teacher", "tasks.student"),
        "distillq_settings": {k: str(v) for k, v in asdict(s).items()},
    }


class DistillqCelery(Celery):
    def on_configure(self) -> None:
        # Called by Celery the first time it needs its config; explicit configure() wins.
        if self._config_source is None:
            self.config_from_object(celery_config(Settings.from_env()))


app = DistillqCelery("distillq")


def configure(settings: Settings) -> Celery:
    """Point the app at ``settings`` (broker, backend, limits). Call before using the app."""
    app.config_from_object(celery_config(settings), force=True)
    return app


def settings_of(celery_app: Celery) -> Settings:
    raw = celery_app.conf.get("distillq_settings")
    if not raw:
        return Settings.from_env()
    kinds = {f.name: f.type for f in fields(Settings)}
    values: dict[str, Any] = {}
    for k, v in raw.items():
        if kinds.get(k) in (int, "int"):
            values[k] = int(v)
        elif k == "storage":
            values[k] = Path(v)
        else:
            values[k] = v
    return Settings(**values)
