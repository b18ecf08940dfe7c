"""What every distillq task shares: job loading, an attempt cap, progress, failure records."""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

from celery import Task
from celery.exceptions import Ignore, Reject, SoftTimeLimitExceeded, WorkerLostError
from celery.worker.request import Request

from distillq.core import faults
from distillq.core.control import placement
from distillq.core.control import state as control
from distillq.core.job.jobs import Job, load_job
from distillq.core.runtime import broker, live, memory, registry
from distillq.core.track import events as tracking
from distillq.errors import DistillqError, JobNotFound, JobStopped, Superseded, TransientError
from distillq.storage import atomic, records
from distillq.storage.records import FailureRecord, Killed, OnProgress, Progress, ProgressFields
from distillq.storage.taskkeys import TaskKey
from distillq.tasks import sending
from distillq.tasks.celery_app import QUEUE_TASKS, settings_of

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


_oom_kills_seen: list[int] = []  # the worker's cgroup's count when this process last looked


class KillAwareRequest(Request):
    """Runs in the worker's main process, which sees a pool child die: when SIGKILL ended a
    task (the OOM killer's signal), it records how much memory the node had and used, so the
    next delivery, and the failure after the last one, can say it was memory."""

    def on_failure(
        self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
    ) -> Any:
        exc = getattr(exc_info, "exception", None)
        exc = getattr(exc, "exc", exc)  # billiard wraps it (ExceptionWithTraceback)
        if isinstance(exc, WorkerLostError) and "SIGKILL" in str(exc):
            try:
                self._record_kill()
            except Exception as e:  # a note for the next attempt: never in the way of requeue
                log.warning("task %s: its kill was not recorded (%s)", self.id, e)
        return super().on_failure(exc_info, send_failed_event, return_ok)

    def _record_kill(self) -> None:
        task = self.task
        job_id, key = task.job_and_key(tuple(self.args), dict(self.kwargs))
        mem = memory.now()
        oom = None
        if mem.peak_mb is not None:
            oom = bool(_oom_kills_seen) and mem.oom_kills > _oom_kills_seen[0]
            _oom_kills_seen[:] = [mem.oom_kills]
        killed = Killed(
            node=str(self.hostname or ""),
            at=time.time(),
            limit_mb=round(mem.limit_mb, 1),
            peak_mb=None if mem.peak_mb is None else round(mem.peak_mb, 1),
            oom=oom,
        )
        s = settings_of(task.app)
        live.record_kill(
            broker.client(s.broker_url, s.sentinel_master),
            job_id,
            str(key),
            killed,
            s.result_expires,
        )


def note_memory_baseline() -> None:
    """The cgroup's OOM-kill count as a worker starts (``worker_init``): later kills are
    counted from it."""
    _oom_kills_seen[:] = [memory.now().oom_kills]


def memory_hint(job: Job, work: TaskKey, killed: Killed) -> str:
    """One clause: the last attempt's death, read as memory where the numbers say so, and the
    knobs that lower it for this kind of work."""
    peak = (
        f", peak {killed.peak_mb / 1024:.2f} of {killed.limit_mb / 1024:.2f} GiB"
        if killed.peak_mb
        else ""
    )
    if killed.oom or (killed.peak_mb and killed.peak_mb >= 0.9 * killed.limit_mb):
        why = f"the out-of-memory killer ended it on {killed.node}{peak}"
    else:
        why = f"SIGKILL ended it on {killed.node} (the out-of-memory killer, most likely{peak})"
    if work.kind in ("teacher", "teacher-eval"):
        knobs = "lower teacher.batch_size or teacher.max_length, or run the teacher on a node with more memory"
    else:
        i = next((n for n, st in enumerate(job.spec.students) if st.name == work.track), 0)
        knobs = (
            f"lower students.{i}.batch_size (raise students.{i}.grad_accum to keep the batch), "
            f"set students.{i}.gradient_checkpointing: true, or add a node with more memory"
        )
        if work.kind == "merge":
            knobs = "fewer replicas per round, or a node with more memory for the merge"
    return f"{why}: {knobs}"


class JobTask(Task):
    """Base of distillq tasks.

    Each task sets ``work_key``, a function with the task's own parameters that returns the
    ``TaskKey`` of the work they name (passed to ``app.task(work_key=staticmethod(...))``).
    """

    abstract = True
    Request = "distillq.tasks.base:KillAwareRequest"
    max_retries = None  # attempt() enforces Settings.max_attempts across every kind of retry
    work_key: Callable[..., TaskKey]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        result = super().__call__(*args, **kwargs)
        # The task body is done; Celery stores its result (and counts the chord) next.
        faults.hit(f"reply:{self.name}")
        return result

    def job(self, job_id: str) -> Job:
        """The job, or (this node does not see it: its DISTILLQ_STORAGE differs from the
        enqueuing node's) the task handed back. Failing it would lose it: its failure record
        could not even be written where the job is. After MAX_HANDBACKS it is dropped, and
        `distillq resume` re-queues it once the node is fixed."""
        s = settings_of(self.app)
        try:
            return load_job(s.storage, job_id)
        except JobNotFound:
            node = str(self.request.hostname or "this node")
            reason = (
                f"node {node} does not see job {job_id} under its storage {s.storage}: set "
                "DISTILLQ_STORAGE on that node to the directory every node shares"
            )

            def give_up(n: int) -> None:
                if n > placement.MAX_HANDBACKS:
                    raise Ignore()

            key = str(self.work_key(*self.request.args, **(self.request.kwargs or {})))
            self._hand_back(job_id, key, placement.STORAGE, reason, give_up)

    def _hand_back(
        self, job_id: str, key: str, ref: str, reason: str, give_up: Callable[[int], None]
    ) -> NoReturn:
        """Record why this node cannot run the task (``status`` shows it, per ``ref``) and give
        it back to its queue after a back-off, no attempt counted. ``give_up(n)``, called with
        the hand-back count, raises instead when handing back should stop."""
        r = self.redis()
        live.mark_unable(r, job_id, str(self.request.hostname or "this node"), ref, reason)
        n = live.count_handback(r, job_id, key, settings_of(self.app).result_expires)
        give_up(n)
        log.warning("job %s %s: handing it back: %s", job_id, key, reason)
        time.sleep(placement.backoff(n))
        raise Reject(reason, requeue=True)

    def redis(self) -> Any:
        s = settings_of(self.app)
        return broker.client(s.broker_url, s.sentinel_master)

    def place(self, job: Job, key: str, needs: list[placement.Need]) -> None:
        """Hand the task back (Reject, requeued: no attempt counted) if this node cannot load
        one of ``needs``; fail it if no live node on its queue can (core/placement.py)."""
        for what, ref in needs:
            reason = placement.cannot_load(what, ref)
            if reason is None:
                continue

            def give_up(n: int, what: str = what, ref: str = ref, reason: str = reason) -> None:
                r = self.redis()
                queue = next((q for q, ts in QUEUE_TASKS.items() if self.name in ts), "student")
                unable = live.unable_nodes(r, job.id).get(ref, set())
                if not registry.up_on(r, queue) - unable or n > placement.MAX_HANDBACKS:
                    why = "" if n <= placement.MAX_HANDBACKS else f", handed back {n - 1} times"
                    raise NoCapableNode(
                        f"no registered node can load {what} {ref} ({len(unable)} node(s) "
                        f"cannot{why}): {reason}"
                    )

            self._hand_back(
                job.id, key, ref, f"this node cannot load {what} {ref}: {reason}", give_up
            )

    def log_nodes(self, job: Job) -> None:
        """The nodes' load from their heartbeats, to the job's trackers (``report_to``)."""
        if not job.spec.report_to:
            return
        try:  # the work is done and saved: a tracker's read of Redis must not fail the task
            seconds = int(time.time() - job.paths.spec.stat().st_mtime)
            views = registry.list_nodes(self.redis())
        except Exception as e:
            log.warning("job %s: node load not tracked: %s", job.id, e)
            return
        tracking.nodes(job.spec.report_to, job.paths, seconds, views)

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
        killed = live.last_kill(self.redis(), job.id, key) if n > 1 else None
        if n > s.max_attempts:
            # A task that kills its worker every time is re-queued by task_reject_on_worker_lost
            # with no exception to count; this counter is what stops it.
            why = f"; {memory_hint(job, work, killed)}" if killed else ""
            raise GaveUp(
                f"{key} was delivered {n} times (limit {s.max_attempts}); last attempts died "
                f"without finishing{why}"
            )
        if killed is not None:
            log.warning(
                "job %s %s: attempt %d: %s", job.id, key, n - 1, memory_hint(job, work, killed)
            )
        fence = functools.partial(live.check_fence, self.redis(), job.id, key, n)
        ours = True  # whether the progress entry is this attempt's to clear
        try:
            with atomic.fenced(fence):
                yield n
        except JobStopped as e:  # cancelled while running: stop, record nothing as failed
            log.warning("job %s %s: %s", job.id, key, e)
            raise Ignore() from None
        except Exception as e:
            # Refused by the fence, or failed after a later attempt took the work over (this
            # node was presumed dead): the work is no longer ours, so no retry, no failure.
            if isinstance(e, Superseded) or _superseded(fence):
                log.warning("job %s %s: attempt %d superseded (%s)", job.id, key, n, e)
                ours = False
                raise Ignore() from None
            if isinstance(e, DistillqError) and not isinstance(e, TransientError):
                raise
            if n < s.max_attempts and not isinstance(e, SoftTimeLimitExceeded):
                log.warning("job %s %s: attempt %d failed (%s); retrying", job.id, key, n, e)
                wait = min(60, 2**n)
                # retry() publishes the next delivery, then raises Retry, which send() passes on
                again = functools.partial(self.retry, exc=e, countdown=wait)
                raise sending.send(self.app, again, f"a retry of {key}") from e
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
