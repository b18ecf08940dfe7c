"""A job's state, derived from storage (what is done) and Redis (what is running now)."""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass, field
from typing import Any

from distillq.core.control import placement
from distillq.core.control import state as control
from distillq.core.job.jobs import Job
from distillq.core.runtime import live, registry
from distillq.storage import cache, records, taskkeys
from distillq.storage.checkpoints import merged_shards, replica_stats
from distillq.storage.layout import sidecar
from distillq.storage.records import DataNotes, FailureRecord, Progress, RoundMarker


@dataclass(frozen=True)
class FailureSummary:
    task: str
    error: str


@dataclass(frozen=True)
class ShardState:
    shard: int
    state: str  # pending | running | done | failed
    tokens: int | None = None
    bytes: int | None = None
    tokens_per_s: float | None = None
    error: str | None = None
    progress: Progress | None = None


@dataclass(frozen=True)
class TrackState:
    rounds_merged: int
    rounds: int
    merged_shards: list[int]
    running: dict[str, Progress]
    replicas: int
    merging: bool = False
    """A merge of this track is running (it publishes progress while it folds deltas in)."""
    phase: str = ""
    """An on-policy track's round in flight, by phase: "round 3: sampled 1/2, scored 0/2,
    trained 0/2" (from the files on storage), with the parts running now."""


@dataclass(frozen=True)
class JobStatus:
    """What `status`, `watch` and `wait` show. Writer: ``job_status``; readers: ``app.view``."""

    job_id: str
    state: str  # queued | running | failed | paused | cancelled | done
    mode: str
    shards: list[ShardState]
    tracks: dict[str, TrackState]
    at: float
    created_at: float | None = None
    teacher_eval: bool | None = None
    failures: dict[str, FailureSummary] = field(default_factory=dict)
    data: DataNotes = field(default_factory=DataNotes)
    report: str | None = None
    waiting: list[str] = field(default_factory=list)
    """Work that waits for a node able to load its model (``core.placement``)."""
    unheard: list[str] = field(default_factory=list)
    """Queues the job still needs that no live node consumes (``registry.unheard``)."""
    broker: str = ""
    """Why the broker does not answer (down, failing over); empty when it does."""

    def to_json(self) -> dict[str, Any]:
        return records.to_json(self)


def failures(job: Job) -> dict[str, FailureSummary]:
    out = {}
    if job.paths.failures_dir.exists():
        for f in sorted(job.paths.failures_dir.glob("*.json")):
            rec = records.read(FailureRecord, f)
            out[f.stem] = FailureSummary(task=rec.task, error=rec.error)
    return out


def job_status(job: Job, redis_client: Any | None = None, broker: str = "") -> JobStatus:
    """The job as storage and (when given) Redis see it; ``broker`` says why Redis is absent."""
    running = live.progress(redis_client, job.id) if redis_client is not None else {}
    failed = failures(job)
    shards = []
    for i in range(job.n_shards):
        key = str(taskkeys.teacher(i))
        if job.paths.shard_stats(i).exists():
            st = cache.read_stats(job.paths.shard_stats(i))
            entry = ShardState(
                i, "done", tokens=st.tokens, bytes=st.bytes, tokens_per_s=st.tokens_per_s
            )
        elif key in failed:
            entry = ShardState(i, "failed", error=failed[key].error)
        elif key in running:
            entry = ShardState(i, "running", progress=running[key])
        else:
            entry = ShardState(i, "pending")
        shards.append(entry)
    tracks = {}
    for spec in job.spec.students:
        merged = sorted(merged_shards(job.paths, spec.name))
        live_replicas = {
            k: v
            for k, v in running.items()
            if (tk := taskkeys.parse(k)) is not None
            and tk.kind == "replica"
            and tk.track == spec.name
        }
        merging = any(
            (tk := taskkeys.parse(k)) is not None and tk.kind == "merge" and tk.track == spec.name
            for k in running
        )
        tracks[spec.name] = TrackState(
            phase=_phase(job, spec.name, merged, running) if spec.on_policy else "",
            rounds_merged=len(merged),
            rounds=job.rounds(spec.name),
            merged_shards=merged,
            running=live_replicas,
            replicas=spec.replicas,
            merging=merging,
        )
    done = job.paths.report.exists()
    stopped = control.state(job)
    state = (
        "done"
        if done
        else stopped
        if stopped != control.RUNNING
        else "failed"
        if failed
        else "running"
        if running or any(s.state == "done" for s in shards)
        else "queued"
    )
    waiting = _waiting(job, redis_client, shards, tracks) if state not in ("done", "failed") else []
    unheard: list[str] = []
    if redis_client is not None and state in ("queued", "running"):
        teacher_left = any(s.state != "done" for s in shards) or (
            job.spec.has_teacher and not job.paths.teacher_eval.exists()
        )
        unheard = registry.unheard(
            redis_client, ["teacher", "student"] if teacher_left else ["student"]
        )
    created = dt.datetime.fromisoformat(job.info.created).timestamp() if job.info.created else None
    return JobStatus(
        job_id=job.id,
        created_at=created,
        state=state,
        mode=job.spec.mode,
        shards=shards,
        tracks=tracks,
        teacher_eval=job.paths.teacher_eval.exists() if job.spec.has_teacher else None,
        failures=failed,
        data=job.info.data,  # skipped lines and truncated records, from enqueue
        report=str(job.paths.report) if done else None,
        at=time.time(),
        waiting=waiting,
        unheard=unheard,
        broker=broker,
    )


def _phase(job: Job, track: str, merged: list[int], running: dict[str, Progress]) -> str:
    """Where an on-policy track's round in flight stands: parts sampled, scored, trained."""
    marker = records.read_if_exists(RoundMarker, job.paths.round_inflight(track))
    if marker is None or marker.shard in merged:
        return ""
    spec = job.spec.student(track)
    r, n, parts = marker.shard, spec.replicas, spec.parts
    paths = job.paths
    done = {
        "sampled": (
            sum(sidecar(paths.onpolicy_samples(track, r, i)).exists() for i in range(parts)),
            parts,
        ),
        "scored": (
            sum(sidecar(paths.onpolicy_scored(track, r, i)).exists() for i in range(parts)),
            parts,
        ),
        "trained": (sum(replica_stats(paths, track, r, i) is not None for i in range(n)), n),
    }
    now = [
        f"{tk.kind} part {tk.replica} {p.get('samples', 0)}/{p.get('of', '?')}"
        for k, p in running.items()
        if (tk := taskkeys.parse(k)) is not None
        and tk.kind in ("sample", "score")
        and tk.track == track
        and tk.shard == r
    ]
    said = ", ".join(f"{k} {v}/{of}" for k, (v, of) in done.items())
    return f"round {r}: {said}" + (f" ({'; '.join(sorted(now))})" if now else "")


def pulse(st: JobStatus) -> str:
    """Changes whenever the job moves: a shard or round finishes, or a running task reports
    progress (each report carries its time). `wait --stall` gives up when it stops changing."""
    moving = {
        "shards": [(sh.state, sh.progress) for sh in st.shards],
        "tracks": {
            k: (t.rounds_merged, t.running, t.merging, t.phase) for k, t in st.tracks.items()
        },
        "failures": sorted(st.failures),
        "state": st.state,
    }
    return json.dumps(moving, sort_keys=True, default=str)


def _waiting(
    job: Job, r: Any | None, shards: list[ShardState], tracks: dict[str, TrackState]
) -> list[str]:
    """ "shard 3 waits for a node that can load teacher X (2 nodes cannot)", per model."""
    unable = live.unable_nodes(r, job.id) if r is not None else {}
    if not unable:
        return []
    out = []
    if blind := unable.get(placement.STORAGE):
        storage = job.paths.root.parent.parent
        out.append(
            f"{len(blind)} node(s) do not see this job ({', '.join(sorted(blind))}): set "
            f"DISTILLQ_STORAGE there to {storage}, the storage it was enqueued on"
        )
    pending = [s.shard for s in shards if s.state == "pending"]
    if job.spec.teacher and pending and (n := len(unable.get(job.spec.teacher.model, ()))):
        out.append(
            f"shard {pending[0]} waits for a node that can load teacher "
            f"{job.spec.teacher.model} ({n} node(s) cannot)"
        )
    for spec in job.spec.students:
        t = tracks[spec.name]
        if t.rounds_merged < t.rounds and not t.running and (n := len(unable.get(spec.model, ()))):
            out.append(
                f"track {spec.name} waits for a node that can load student {spec.model} "
                f"({n} node(s) cannot)"
            )
    return out
