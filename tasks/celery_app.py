"""The Celery app: queues ``teacher`` and ``student``, routes, and the settings that matter.

Configured explicitly by ``configure(settings)`` (the CLI does this), or from ``DISTILLQ_*``
environment variables when Celery first needs its config (``celery -A distillq.tasks.celery_app``).
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Queue

from distillq.core.runtime.settings import QUEUES, Settings

TEACHER_TASKS = ("distillq.teacher_shard", "distillq.teacher_eval")
STUDENT_TASKS = ("distillq.train_replica", "distillq.merge_round", "distillq.finalize")
QUEUE_TASKS = {"teacher": TEACHER_TASKS, "student": STUDENT_TASKS}
_URL_VARS = ("DISTILLQ_BROKER_URL", "DISTILLQ_RESULT_BACKEND")


# Retry a Redis call for about a minute: 0, 1, 2, 2, ... s apart, 30 times.
RIDE_OUT = {"max_retries": 30, "interval_start": 0, "interval_step": 1, "interval_max": 2}


def celery_config(s: Settings) -> dict[str, Any]:
    """Every Celery setting distillq relies on, each with the reason it is set."""
    # One visibility timeout for broker and result backend, longer than every hard time limit:
    # Redis re-delivers an unacknowledged task after it, so a shorter one would run a slow
    # task twice at once (Settings.__post_init__ enforces the order, per queue).
    transport: dict[str, Any] = {"visibility_timeout": s.visibility_timeout}
    soft, hard = s.time_limits()
    # A worker drains its queues in the order -Q names them: kombu's Redis transport polls
    # them round-robin by default, so a GPU node on `-Q teacher,student` took student work
    # while teacher shards (the bottleneck) waited. "priority" hands BRPOP the queues in the
    # worker's own order, and BRPOP pops from the first non-empty one.
    consume = {**transport, "queue_order_strategy": "priority"}
    # Through Redis Sentinel (sentinel:// URLs) kombu and Celery's backend ask the sentinels
    # for this master and follow a failover; neither reads the name from the URL.
    if s.sentinel_master:
        transport["master_name"] = s.sentinel_master
        consume["master_name"] = s.sentinel_master
    return {
        # TLS (rediss://) options and credentials ride in the URLs themselves (Settings puts
        # DISTILLQ_REDIS_TLS_* there), so the broker, the result backend and broker.client()
        # read one source; broker_use_ssl / redis_backend_use_ssl would only repeat it.
        "broker_url": s.broker_url,
        "result_backend": s.backend_url,
        # Two queues, each task routed by name: a worker's -Q picks teacher (GPU) or student
        # work or both (docs/DESIGN.md §7); anything unrouted is student work.
        "task_queues": tuple(Queue(q) for q in QUEUES),
        "task_default_queue": "student",
        "task_routes": {t: {"queue": q} for q, ts in QUEUE_TASKS.items() for t in ts},
        # Acknowledge after the task ran, not when it was received: a task whose worker dies
        # is delivered again instead of lost. Every task is idempotent because of this.
        "task_acks_late": True,
        # ...and a task whose worker process was killed (OOM, SIGKILL) is re-queued rather than
        # failed; tasks/base.py caps the attempts so a poison task cannot loop forever.
        "task_reject_on_worker_lost": True,
        # Take one task at a time: a worker holding a reserved second task would hide it from
        # idle workers for the whole length of the first (shards run for minutes).
        "worker_prefetch_multiplier": 1,
        "broker_transport_options": consume,
        # Ride out a Redis restart (about a minute) when storing results and chord counts...
        "result_backend_transport_options": {**transport, "retry_policy": RIDE_OUT},
        # ...including the STARTED state stored before a task body runs: without retries a
        # task received just before Redis went away failed "outside its body", was acked, and
        # failed its round's chord; the work was lost (issue 14a). 0.1 s doubling to 2 s, 40
        # times: about a minute.
        "result_backend_always_retry": True,
        "result_backend_max_retries": 40,
        "result_backend_base_sleep_between_retries_ms": 100,
        "result_backend_max_sleep_between_retries_ms": 2000,
        # ...and when sending the next tasks, instead of failing the task that sends them.
        "task_publish_retry_policy": RIDE_OUT,
        # JSON only: unpickling a message runs code it names, so a pickled message would be
        # remote code execution on every worker; the worker refuses and drops anything else.
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # Chord counters and results must outlive a job, or late rounds never merge.
        "result_expires": s.result_expires,
        # A chord's own keys (its counter, and the marker of a fired chord, whose group id no
        # job owns, so live.release_job cannot find it) need to outlive one round only: a day,
        # or twice a round's worst case (every attempt of a replica at its hard limit).
        "result_chord_expires": max(24 * 3600, 2 * s.max_attempts * s.time_limits("student")[1]),
        # Hard limit kills a stuck task's process (then acks_late re-queues it, up to the
        # attempt cap); the soft limit comes first so the task can clean up its temp files.
        "task_time_limit": hard,
        "task_soft_time_limit": soft,
        # Per queue: a teacher shard and a student replica take very different times, so each
        # queue's tasks carry their own limits (DISTILLQ_TEACHER_TIME_LIMIT, ...).
        "task_annotations": {
            t: dict(zip(("soft_time_limit", "time_limit"), s.time_limits(q), strict=True))
            for q, ts in QUEUE_TASKS.items()
            for t in ts
        },
        # If the broker connection drops, let running tasks finish. Cancelling them (Celery's
        # future default) loses them on Redis: once reconnected, the worker acknowledges the
        # terminated task as revoked and its message is deleted, not re-queued (seen in the AOF
        # in tests/e2e/test_faults.py). A finished task whose ack failed stays unacked, the
        # node's sweep hands it back (workers/reaper.py) and the redelivery finds the work done.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        # Keep retrying the broker at start-up: in compose the worker may start before Redis.
        "broker_connection_retry_on_startup": True,
        # STARTED state and task events: `distillq status` and Flower show running tasks.
        "task_track_started": True,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        # Task modules the worker imports at start (this module stays free of task code).
        "imports": ("distillq.tasks.teacher", "distillq.tasks.student"),
        # Our own settings for tasks (settings_of); without the URLs, whose credentials Celery
        # censors in broker_url/result_backend but might not under a name of ours.
        "distillq_settings": {k: v for k, v in s.to_env().items() if k not in _URL_VARS},
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
    """The Settings this app was configured with (in a worker: the ones its CLI was given)."""
    raw = celery_app.conf.get("distillq_settings")
    if not raw:
        return Settings.from_env()
    broker, backend = celery_app.conf.broker_url, celery_app.conf.result_backend
    return Settings.from_env(
        raw, broker_url=broker or None, result_backend=backend if backend != broker else None
    )
