"""The Python API: what the CLI does, as objects a notebook or a pipeline holds.

    from distillq import Client
    client = Client()                      # $DISTILLQ_BROKER_URL / $DISTILLQ_STORAGE, like the CLI
    job = client.enqueue("job.yaml")       # or a dict: the YAML's mapping
    job.wait(on_update=lambda st: print(st.state, st.tracks["s"].version))
    print(job.report().students["s"].eval_loss)

The CLI is a thin layer over this module: the same calls, the same exceptions (subclasses of
``DistillqError``) with the same one-line messages. ``wait`` raises ``JobFailed``,
``JobCancelled`` or ``WaitTimeout`` where ``distillq wait`` exits non-zero.

Imports of the layers below sit inside the methods, as in the CLI: ``import distillq`` and
``Client()`` cost no torch (``status`` stays under a second).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distillq.core.runtime.settings import Settings
from distillq.errors import DistillqError, JobCancelled, JobFailed, WaitTimeout

if TYPE_CHECKING:
    from distillq.core.control.status import JobStatus
    from distillq.storage.node_records import NodeView
    from distillq.storage.report_records import Report
    from distillq.tasks.pipeline import Resubmitted


OnUpdate = Callable[["JobStatus"], None]


class Client:
    """One broker and one storage root. ``None`` takes ``DISTILLQ_BROKER_URL`` and
    ``DISTILLQ_STORAGE``, then a running ``distillq up`` cluster's broker, like the CLI."""

    def __init__(self, broker_url: str | None = None, storage: str | Path | None = None) -> None:
        s = Settings.from_env(broker_url=broker_url, storage=storage)
        from distillq.workers.cluster import with_cluster_broker

        self.settings = with_cluster_broker(s)

    def __repr__(self) -> str:
        return f"Client(broker_url={self.settings.broker_url!r}, storage={str(self.settings.storage)!r})"

    def _ready(self) -> Settings:
        """Settings after checking Redis answers, with the Celery app configured from them."""
        from distillq.core.runtime import broker
        from distillq.tasks.celery_app import configure

        broker.ping(self.settings.broker_url, self.settings.sentinel_master)
        configure(self.settings)
        return self.settings

    def _redis(self) -> tuple[Any | None, str]:
        """A Redis client, or None and why Redis does not answer (storage alone tells what is
        done; through sentinels the reason says when the broker is failing over)."""
        from distillq.core.runtime import broker

        return broker.client_or_why(self.settings.broker_url, self.settings.sentinel_master)

    def enqueue(
        self,
        spec: str | Path | Mapping[str, Any],
        *,
        overrides: list[str] | tuple[str, ...] = (),
        max_records: int | None = None,
        skip_bad_lines: bool = False,
    ) -> Job:
        """Submit a job: ``spec`` is a YAML path or the mapping a YAML file would hold (its
        relative paths resolve against the current directory). ``overrides``: ``key=value`` as
        ``--set`` takes them. Raises SpecError, DataError, ModelError, BrokerError."""
        from distillq.core.create import create_job
        from distillq.core.job import reuse
        from distillq.core.job.jobs import data_notes
        from distillq.core.job.load import load_spec, load_spec_dict
        from distillq.core.runtime import broker, registry
        from distillq.storage.layout import check_writable
        from distillq.tasks import pipeline
        from distillq.tasks.celery_app import app

        storage = self.settings.storage
        sets = [*overrides, *([f"max_records={max_records}"] if max_records is not None else [])]
        # The spec first: fixing a typo in it should not need a running Redis.
        if isinstance(spec, Mapping):
            job_spec = load_spec_dict(dict(spec), sets, lambda raw: reuse.resolve(raw, storage))
        else:
            job_spec = load_spec(Path(spec), sets, lambda raw: reuse.resolve(raw, storage))
        s = self._ready()
        check_writable(s.storage)
        created = create_job(s.storage, job_spec, skip_bad_lines=skip_bad_lines)
        queued = pipeline.submit(app, created)
        reused = (
            f", {created.n_shards - len(queued)} read from job {created.info.cache_job}'s cache"
            if created.info.cache_job
            else ""
        )
        notes = [
            *data_notes(created),
            f"queued {len(queued)} teacher shards{reused}, {len(job_spec.students)} student "
            f"track(s); storage {created.paths.root}",
            *registry.unheard(
                broker.client(s.broker_url, s.sentinel_master), ["teacher", "student"]
            ),
        ]
        return Job(self, created.id, notes=notes)

    def job(self, job_id: str) -> Job:
        """A job already on storage. Raises JobNotFound."""
        from distillq.core.job.jobs import load_job

        load_job(self.settings.storage, job_id)
        return Job(self, job_id)

    def jobs(self) -> list[Job]:
        """Every job on storage, oldest first."""
        from distillq.core.job.jobs import list_jobs

        return [Job(self, j) for j in list_jobs(self.settings.storage)]

    def nodes(self) -> list[NodeView]:
        """The worker nodes registered with the broker: up or gone, their queues, load."""
        from distillq.core.runtime import broker
        from distillq.core.runtime.registry import list_nodes

        broker.ping(self.settings.broker_url, self.settings.sentinel_master)
        return list_nodes(broker.client(self.settings.broker_url, self.settings.sentinel_master))


@dataclass
class Job:
    """A submitted job. Reads go to storage and Redis on each call: a ``Job`` holds no state
    that can go stale, so any process may build one from an id (``client.job(id)``)."""

    client: Client
    id: str
    notes: list[str] = field(default_factory=list)
    """What ``enqueue`` said about the job (data notes, shards queued, queues nobody serves)."""

    def __repr__(self) -> str:
        return f"Job({self.id!r})"

    def _load(self) -> Any:
        from distillq.core.job.jobs import load_job

        return load_job(self.client.settings.storage, self.id)

    @property
    def root(self) -> Path:
        """The job's directory on storage (cache, checkpoints, outputs, report)."""
        return Path(self._load().paths.root)

    def status(self) -> JobStatus:
        """Per-shard and per-track state, as ``distillq status --json`` prints it."""
        from distillq.core.control.status import job_status

        r, why = self.client._redis()
        return job_status(self._load(), r, broker=why)

    def wait(
        self,
        timeout: float | None = None,
        on_update: OnUpdate | None = None,
        *,
        stall: float | None = None,
        interval: float = 1.0,
    ) -> JobStatus:
        """Block until the job is done; return its final status. ``on_update`` is called with
        each status that moved (a shard, a round, a task's progress), and with the last.

        Raises JobFailed (with the first failure's task and error), JobCancelled, or
        WaitTimeout after ``timeout`` seconds or ``stall`` seconds without movement."""
        from distillq.core.control.status import job_status, pulse

        job = self._load()
        started = time.time()
        last_pulse, moved_at = "", started
        while True:
            r, why = self.client._redis()
            st = job_status(job, r, broker=why)
            if (now := pulse(st)) != last_pulse or st.state in ("done", "failed", "cancelled"):
                last_pulse, moved_at = now, time.time()
                if on_update is not None:
                    on_update(st)
            if st.state == "done":
                return st
            if st.state == "failed":
                lines = [f"{key}: {f.error}" for key, f in st.failures.items()]
                raise JobFailed(f"job {self.id} failed: {'; '.join(lines) or 'see its status'}")
            if st.state == "cancelled":
                raise JobCancelled(f"job {self.id} was cancelled")
            where = f"`distillq status {self.id}` shows where it is"
            if timeout is not None and time.time() - started > timeout:
                raise WaitTimeout(
                    f"job {self.id} not done after {timeout:.0f} s (state {st.state}); {where}"
                    + "".join(f"; {u}" for u in st.unheard)
                )
            if stall is not None and time.time() - moved_at > stall:
                raise WaitTimeout(
                    f"job {self.id} has not moved for {stall:.0f} s (state {st.state}): no "
                    f"shard, round or task progress; {where}"
                    + "".join(f"; {u}" for u in [*st.unheard, *st.waiting])
                )
            time.sleep(interval)

    def pause(self) -> None:
        """Start no new work for the job; running tasks finish."""
        self._stop("paused", "pause")

    def cancel(self) -> None:
        """Stop the job: running tasks stop at their next batch."""
        self._stop("cancelled", "cancel")

    def _stop(self, new: str, verb: str) -> None:
        from distillq.core.control import state as control

        job = self._load()
        if job.paths.report.exists():
            raise DistillqError(f"job {job.id} is done already; nothing to {verb}")
        control.set_state(job, new, reason=f"distillq {verb}")

    def resume(self) -> tuple[str, Resubmitted]:
        """Continue a paused or cancelled job, or re-queue its remaining work from storage.
        Returns the state it was in and what was queued again."""
        from distillq.core.control import state as control
        from distillq.tasks import pipeline
        from distillq.tasks.celery_app import app

        self.client._ready()
        job = self._load()
        was = control.state(job)
        control.set_state(job, control.RUNNING)
        return was, pipeline.resubmit(app, job)

    def report(self) -> Report:
        """The finished job's report (typed: per track the held-out losses, the curve, the
        outputs). Raises DistillqError while the job is not done."""
        from distillq.storage import records
        from distillq.storage.report_records import Report

        job = self._load()
        if not job.paths.report.exists():
            raise DistillqError(
                f"job {job.id} has no report yet (it is written when the job is done); "
                "`job.wait()` first"
            )
        return records.read(Report, job.paths.report)
