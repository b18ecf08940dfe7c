"""Fold a round's replica deltas into a track's global checkpoint: the outer step.

    global_{v+1} = global_v + outer_lr · mean_r(delta_r)

as in local SGD / DiLoCo. With R = 1 and outer_lr = 1 this is plain sequential training.
Replicas' AdamW states are averaged (moments element-wise, the step count max) so the next
round's inner optimizer continues warm. The caller holds the per-track lock; the merge is
idempotent: a shard already in ``merged_shards`` of the latest version is not merged twice.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any

import torch

from distillq.core import faults
from distillq.core.job.data import Sample
from distillq.core.job.jobs import Job
from distillq.core.job.models import load_tokenizer
from distillq.core.job.spec import StudentSpec
from distillq.core.student import evaluate
from distillq.core.student.train import build, lr_at, snapshot
from distillq.core.track import events as tracking
from distillq.storage import checkpoints, records
from distillq.storage.records import CheckpointMeta, RoundInfo, RoundMarker

log = logging.getLogger(__name__)


def average_optimizer_states(states: list[dict[str, Any]]) -> dict[str, Any]:
    """Element-wise mean of AdamW moments; ``step`` is the max. States must share param groups."""
    if len(states) == 1:
        return states[0]
    out = {"param_groups": states[0]["param_groups"], "state": {}}
    for idx, first in states[0]["state"].items():
        merged: dict[str, Any] = {}
        for key, value in first.items():
            values = [s["state"][idx][key] for s in states]
            if key == "step":
                merged[key] = max(values, key=float)
            elif isinstance(value, torch.Tensor):
                merged[key] = torch.stack(values).mean(0)
            else:
                merged[key] = value
        out["state"][idx] = merged
    return out


def _curve_samples(job: Job, spec: StudentSpec) -> list[Sample]:
    """The first ``curve_samples`` held-out samples: a bounded eval after every merge."""
    if not job.spec.curve_samples:
        return []
    tok = load_tokenizer(spec.model)
    return evaluate.eval_samples(job, tok, limit=job.spec.curve_samples)


def initial_params(job: Job, track: str) -> dict[str, torch.Tensor]:
    """The track's trainable parameters before any round: the seeded adapter (or base weights)."""
    return snapshot(build(job.spec.student(track)))


@dataclass(frozen=True)
class MergeResult:
    """What ``merge_round`` did; the task returns it as JSON."""

    merged: bool
    version: int


def merge_round(job: Job, track: str, shard: int) -> MergeResult:
    """Merge ``shard``'s replicas into a new global version (call under the track lock)."""
    faults.hit(f"merge:{track}")  # a drill's point: a merge that holds its track lock
    spec = job.spec.student(track)
    current = checkpoints.latest(job.paths, track)
    if current is not None and shard in current.meta.merged_shards:
        log.info(
            "job %s track %s shard %d: already merged in v%04d",
            job.id,
            track,
            shard,
            current.version,
        )
        return MergeResult(merged=False, version=current.version)
    found = [checkpoints.replica_stats(job.paths, track, shard, r) for r in range(spec.replicas)]
    missing = [r for r, s in enumerate(found) if s is None]
    if missing:
        raise RuntimeError(
            f"job {job.id} track {track} shard {shard}: replicas {missing} have no saved delta"
        )
    stats = [s for s in found if s is not None]
    base = current.params() if current is not None else initial_params(job, track)
    deltas, optims = zip(
        *(checkpoints.load_replica(job.paths, track, shard, r) for r in range(spec.replicas)),
        strict=True,
    )
    new = {n: base[n] + spec.outer_lr * torch.stack([d[n] for d in deltas]).mean(0) for n in base}
    optim = average_optimizer_states([o for o in optims if o is not None]) if all(optims) else None
    marker = records.read_if_exists(RoundMarker, job.paths.round_inflight(track))
    round_info = RoundInfo(
        shard=shard,
        queued_at=marker.queued_at if marker is not None and marker.shard == shard else None,
        merged_at=time.time(),
        replicas=[s.without_curve() for s in stats],
        curve=[p for s in stats for p in s.curve],
    )
    curve = _curve_samples(job, spec)
    start = current.meta.heldout_start if current is not None else None
    if curve:
        # The first merge also measures the untrained start: one model, both parameter sets.
        losses = evaluate.student_losses(spec, [new] if current else [base, new], curve)
        round_info = dataclasses.replace(round_info, heldout=losses[-1])
        start = start if current else losses[0]
    prev_step = current.meta.step if current is not None else 0
    meta = CheckpointMeta(
        track=track,
        step=prev_step + max(s.steps for s in stats),
        merged_shards=[*(current.meta.merged_shards if current else []), shard],
        rounds=[*(current.meta.rounds if current else []), round_info],
        heldout_start=start,
    )
    version = (current.version if current is not None else 0) + 1
    ckpt = checkpoints.write_version(job.paths, track, version, new, optim, meta)
    checkpoints.drop_round(job.paths, track, shard)
    lr = lr_at(meta.step, job.spec.student(track), job.info.total_steps.get(track, meta.step))
    tracking.round_merged(job.spec.report_to, job.paths, track, round_info, meta.step, lr)
    log.info(
        "job %s track %s shard %d: merged %d replicas into v%04d",
        job.id,
        track,
        shard,
        spec.replicas,
        version,
    )
    return MergeResult(merged=True, version=ckpt.version)
