"""Pause, resume and cancel: a user's decision, kept on storage beside the job.

Storage, not Redis, because the decision must survive Redis losing its data, and every worker
already reads the job's directory. Tasks read it before starting work (a paused or cancelled
job starts nothing new) and running tasks read it between batches (cancel stops them).
"""

from __future__ import annotations

import time

from distillq.core.job.jobs import Job
from distillq.errors import JobStopped
from distillq.storage import records
from distillq.storage.records import ControlRecord

RUNNING, PAUSED, CANCELLED = "running", "paused", "cancelled"


def state(job: Job) -> str:
    record = records.read_if_exists(ControlRecord, job.paths.control)
    return record.state if record is not None else RUNNING


def set_state(job: Job, new: str, reason: str = "") -> ControlRecord:
    record = ControlRecord(state=new, at=time.time(), reason=reason)
    if new == RUNNING:
        job.paths.control.unlink(missing_ok=True)
    else:
        records.write(job.paths.control, record)
    return record


class CancelWatch:
    """Cheap to call every batch: looks at storage at most every ``every`` seconds."""

    def __init__(self, job: Job, every: float = 2.0) -> None:
        self.job, self.every, self._next = job, every, 0.0

    def __call__(self) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.every
        if state(self.job) == CANCELLED:
            raise JobStopped(f"job {self.job.id} was cancelled")
