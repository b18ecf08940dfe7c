"""What every distillq task shares: job loading, an attempt cap, progress, failure records."""

from __future__ import annotations

import contextlib
import logging
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from celery import Task
from celery.exceptions import Ignore, SoftTimeLimitExceeded

from app import control, live
from app.celery import settings_of
from app.errors import DistillqError, JobStopped
from app.job_store import Job, load_job
from storage.atomic import write_json

log = logging.getLogger(__name__)


# Three Redis round trips per report (live key, task state, Flower event): a few per second is
# plenty for eyes, and per batch it cost measurable throughput on small batches.
PROGRESS_EVERY = 0.5


class GaveUp(DistillqError):
    """A task was delivered more times than the attempt cap allows."""


class JobTask(Task):
    """Base of distillq tasks; ``task_key`` names the logical unit of work for records."""

    abstract = True
    max_retries = None  # attempt() enforces Settings.max_attempts across every kind of retry

    def job(self, job_id: str) -> Job:
        return load_job(settings_of(self.app).storage, job_id)

    def redis(self) -> Any:
        return live.client(settings_of(self.app).broker_url)

    @contextlib.contextmanager
    def attempt(self, job: Job, key: str, *, pausable: bool = True) -> Iterator[int]:
        """Run one delivery of ``key``: parked if the job is paused (``pausable``) or cancelled;
        refused past ``max_attempts``; retried with backoff on an unexpected error; failed at
        once on a DistillqError (bad data, full disk: another try would fail the same way).
        Yields the attempt number."""
        s = settings_of(self.app)
        if control.state(job) == control.CANCELLED or (
            pausable and control.state(job) == control.PAUSED
        ):
            log.info("job %s %s: job is %s, not started", job.id, key, control.state(job))
            raise Ignore()
        n = live.next_attempt(self.redis(), job.id, key, s.result_expires)
        if n > s.max_attempts:
            # A task that kills its worker every time is re-queued by task_reject_on_worker_lost
            # with no exception to count; this counter is what stops it.
            raise GaveUp(
                f"{key} was delivered {n} times (limit {s.max_attempts}); last attempts died without finishing"
            )
        try:
            yield n
        except JobStopped as e:  # cancelled while running: stop, record nothing as failed
            log.warning("job %s %s: %s", job.id, key, e)
            raise Ignore() from None
        except DistillqError:
            raise
        except Exception as e:
            if n < s.max_attempts and not isinstance(e, SoftTimeLimitExceeded):
                log.warning("job %s %s: attempt %d failed (%s); retrying", job.id, key, n, e)
                raise self.retry(exc=e, countdown=min(60, 2**n)) from e
            raise
        finally:
            live.clear_progress(self.redis(), job.id, key)
        job.paths.failure(key).unlink(missing_ok=True)  # an earlier failure of this work is over

    def progress(self, job: Job, key: str) -> Callable[[dict[str, Any]], None]:
        """A callback that publishes progress to Redis, the task state and a task event (Flower)."""

        cancelled = control.CancelWatch(job)
        last = [0.0]

        def report(fields: dict[str, Any]) -> None:
            cancelled()  # raises JobStopped between batches once the user cancels the job
            now = time.time()
            if now - last[0] < PROGRESS_EVERY:
                return
            last[0] = now
            fields = {**fields, "task": key, "at": now}
            try:
                live.set_progress(self.redis(), job.id, key, fields)
                if self.request.id:
                    self.update_state(state="PROGRESS", meta=fields)
                    self.send_event("task-progress", **fields)
            except Exception as e:  # progress is for eyes only: never fail the work over it
                log.warning("job %s %s: progress not published (%s)", job.id, key, e)

        return report

    def on_failure(
        self, exc: BaseException, task_id: str, args: tuple, kwargs: dict, einfo: Any
    ) -> None:
        job_id = next((a for a in args if isinstance(a, str)), None)
        if job_id is None:
            return
        with contextlib.suppress(Exception):
            job = self.job(job_id)
            key = self.key_of(args)
            write_json(
                job.paths.failure(key),
                {
                    "task": self.name,
                    "task_id": task_id,
                    "key": key,
                    "args": list(args[1:] if isinstance(args[0], list) else args),
                    "error": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exception(exc)[-6:],
                    "at": time.time(),
                },
            )
            log.error("job %s %s failed: %s", job_id, key, exc)

    def key_of(self, args: tuple) -> str:
        return self.name.split(".")[-1]
