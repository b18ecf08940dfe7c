"""What every distillq task shares: job loading, an attempt cap, progress, failure records."""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

from celery import Task
from celery.exceptions import Ignore, Reject, SoftTimeLimitExceeded

from core import broker, control, faults, live, placement, registry
from core.job import Job, load_job
from errors import DistillqError, JobNotFound, JobStopped, Superseded, TransientError
from storage import atomic, records
from storage.records import FailureRecord, OnProgress, Progress, ProgressFields
from storage.taskkeys import TaskKey
from tasks.celery_app import QUEUE_TASKS, settings_of

log = logging.getLogger(__name__)


# Three Redis round trips per report (live key, task state, Flower event): a few per second is
# plenty for eyes, and per batch it cost measurable throughput on small batches.
PROGRESS_EVERY = 0.5


class GaveUp(DistillqError):
    """A task was delivered more times than the attempt cap allows."""


class NoCapableNode(DistillqError):
    """No live node on the task's queue can load the model the task needs."""


def _superseded(fence: Callable[[], None]) -> bool:
    """Whether a later attempt of this work started (False if Redis cannot tell now)."""
    try:
        fence()
    except Superseded:
        return True
    except Exception:
        return False
    return False


class JobTask(Task):
    """Base of distillq tasks.

    Each task sets ``work_key``, a function with the task's own parameters that returns the
    ``TaskKey`` of the work they name (passed to ``app.task(work_key=staticmethod(...))``).
    """

    abstract = True
    max_retries = None  # attempt() enforces Settings.max_attempts across every kind of retry
    work_key: Callable[..., TaskKey]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        result = super().__call__(*args, **kwargs)
        # The task body is done; Celery stores its result (and counts the chord) next.
        faults.hit(f"reply:{self.name}")
        return result

    def job(self, job_id: str) -> Job:
        s = settings_of(self.app)
        try:
            return load_job(s.storage, job_id)
        except JobNotFound:
            self._blind(job_id, s.storage)

    def _blind(self, job_id: str, storage: Path) -> NoReturn:
        """This node does not see the job: its DISTILLQ_STORAGE differs from the enqueuing
        node's (unset, or another mount). Failing the task would lose it (the failure record
        cannot even be written where the job is), so the node says why in Redis, where
        `status` shows it, and hands the task back for a node that sees the job."""
        node = str(self.request.hostname or "this node")
        reason = (
            f"node {node} does not see job {job_id} under its storage {storage}: set "
            "DISTILLQ_STORAGE on that node to the directory every node shares"
        )
        r = self.redis()
        live.mark_unable(r, job_id, node, placement.STORAGE, reason)
        n = live.count_handback(
            r, job_id, f"{self.name}:{self.request.id}", settings_of(self.app).result_expires
        )
        log.error("%s (handed back %d times)", reason, n)
        if n > placement.MAX_HANDBACKS:
            raise Ignore()  # nobody sees it: `distillq resume` re-queues it once fixed
        time.sleep(placement.backoff(n))
        raise Reject(reason, requeue=True)

    def redis(self) -> Any:
        return broker.client(settings_of(self.app).broker_url)

    def place(self, job: Job, key: str, needs: list[placement.Need]) -> None:
        """Hand the task back (Reject, requeued: no attempt counted) if this node cannot load
        one of ``needs``; fail it if no live node on its queue can (core/placement.py)."""
        r = self.redis()
        for what, ref in needs:
            reason = placement.cannot_load(what, ref)
            if reason is None:
                continue
            node = str(self.request.hostname or "this node")
            live.mark_unable(r, job.id, node, ref, reason)
            queue = next((q for q, ts in QUEUE_TASKS.items() if self.name in ts), "student")
            unable = live.unable_nodes(r, job.id).get(ref, set())
            n = live.count_handback(r, job.id, key, settings_of(self.app).result_expires)
            if not registry.up_on(r, queue) - unable or n > placement.MAX_HANDBACKS:
                why = "" if n <= placement.MAX_HANDBACKS else f", handed back {n - 1} times"
                raise NoCapableNode(
                    f"no registered node can load {what} {ref} ({len(unable)} node(s) cannot{why}): "
                    f"{reason}"
                )
            log.warning(
                "job %s %s: this node cannot load %s %s; handing it back", job.id, key, what, ref
            )
            time.sleep(placement.backoff(n))
            raise Reject(reason, requeue=True)

    @contextlib.contextmanager
    def attempt(
        self,
        job: Job,
        work: TaskKey,
        *,
        pausable: bool = True,
        needs: list[placement.Need] | None = None,
    ) -> Iterator[int]:
        """Run one delivery of ``key``: parked if the job is paused (``pausable``) or cancelled;
        handed back if this node cannot load ``needs``; refused past ``max_attempts``; retried
        with backoff on an unexpected error or a TransientError (a teacher server that is down);
        failed at once on any other DistillqError (bad data, full disk: another try would fail
        the same way). Yields the attempt number."""
        s = settings_of(self.app)
        key = str(work)
        if control.state(job) == control.CANCELLED or (
            pausable and control.state(job) == control.PAUSED
        ):
            log.info("job %s %s: job is %s, not started", job.id, key, control.state(job))
            raise Ignore()
        self.place(job, key, needs or [])
        n = live.next_attempt(self.redis(), job.id, key, s.result_expires)
        if n > s.max_attempts:
            # A task that kills its worker every time is re-queued by task_reject_on_worker_lost
            # with no exception to count; this counter is what stops it.
            raise GaveUp(
                f"{key} was delivered {n} times (limit {s.max_attempts}); last attempts died without finishing"
            )
        fence = functools.partial(live.check_fence, self.redis(), job.id, key, n)
        ours = True  # whether the progress entry is this attempt's to clear
        try:
            with atomic.fenced(fence):
                yield n
        except Superseded as e:  # our node was presumed dead and the work went elsewhere
            log.warning("job %s %s: %s", job.id, key, e)
            ours = False
            raise Ignore() from None
        except JobStopped as e:  # cancelled while running: stop, record nothing as failed
            log.warning("job %s %s: %s", job.id, key, e)
            raise Ignore() from None
        except Exception as e:
            if _superseded(fence):  # a failure of work that is no longer ours: no retry
                log.warning(
                    "job %s %s: attempt %d failed (%s) after it was superseded", job.id, key, n, e
                )
                ours = False
                raise Ignore() from None
            if isinstance(e, DistillqError) and not isinstance(e, TransientError):
                raise
            if n < s.max_attempts and not isinstance(e, SoftTimeLimitExceeded):
                log.warning("job %s %s: attempt %d failed (%s); retrying", job.id, key, n, e)
                raise self.retry(exc=e, countdown=min(60, 2**n)) from e
            raise
        finally:
            if ours:  # a superseded attempt leaves the live entry to the attempt that owns it
                live.clear_progress(self.redis(), job.id, key)
        job.paths.failure(key).unlink(missing_ok=True)  # an earlier failure of this work is over

    def progress(self, job: Job, work: TaskKey) -> OnProgress:
        """A callback that publishes progress to Redis, the task state and a task event (Flower)."""

        key = str(work)
        cancelled = control.CancelWatch(job)
        last = [0.0]

        def report(fields: ProgressFields) -> None:
            cancelled()  # raises JobStopped between batches once the user cancels the job
            now = time.time()
            if now - last[0] < PROGRESS_EVERY:
                return
            last[0] = now
            try:
                node = str(self.request.hostname or "")
                record: Progress = {**fields, "task": key, "at": now, "node": node}
                live.set_progress(self.redis(), job.id, key, record)
                if self.request.id:
                    self.update_state(state="PROGRESS", meta=record)
                    self.send_event("task-progress", **record)
            except Exception as e:  # progress is for eyes only: never fail the work over it
                log.warning("job %s %s: progress not published (%s)", job.id, key, e)

        return report

    def on_failure(
        self, exc: BaseException, task_id: str, args: tuple, kwargs: dict, einfo: Any
    ) -> None:
        """Write the failure record `status` shows; if it cannot be written, say so in the log."""
        try:
            job_id, key = self.job_and_key(args, kwargs)
            # Not self.job(): a node that cannot see the job has nowhere to write this.
            job = load_job(settings_of(self.app).storage, job_id)
            records.write(
                job.paths.failure(str(key)),
                FailureRecord(
                    task=self.name,
                    key=str(key),
                    error=f"{type(exc).__name__}: {exc}",
                    at=time.time(),
                    task_id=task_id,
                    args=[a for a in args if not isinstance(a, list)],
                    traceback=traceback.format_exception(exc)[-6:],
                ),
            )
            log.error("job %s %s failed: %s", job_id, key, exc)
        except Exception:
            log.exception(
                "task %s %s failed (%s: %s) and its failure record could not be written",
                self.name,
                task_id,
                type(exc).__name__,
                exc,
            )

    def job_and_key(self, args: tuple, kwargs: dict) -> tuple[str, TaskKey]:
        """The job id and task key a delivery's arguments name (every task takes ``job_id``)."""
        bound = inspect.signature(self.run).bind(*args, **kwargs)
        return str(bound.arguments["job_id"]), self.work_key(*args, **kwargs)
