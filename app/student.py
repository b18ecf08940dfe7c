"""Build a student (+ adapter) and train one replica of a round on its slice of a shard.

A replica starts from the track's latest global checkpoint (or the seeded initial adapter),
trains on samples ``[r·n/R, (r+1)·n/R)`` of the shard for ``epochs`` passes, and saves its
parameter delta and optimizer state. The merge (``app/merge.py``) folds deltas into the
global checkpoint.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from app import peft_methods
from app.job_store import Job
from app.jobs import StudentSpec
from app.losses import kd_loss
from app.models import device, load_causal_lm
from storage import checkpoints
from storage.cache import CacheReader

log = logging.getLogger(__name__)

Progress = Callable[[dict[str, Any]], None]
MAX_CURVE_POINTS = 200


def build(spec: StudentSpec) -> Any:
    """The student model with its adapter (seeded), in train mode, on this process's device."""
    base = load_causal_lm(spec.model, what=f"student {spec.name!r} model")
    if peft_methods.resolve(spec.method) != peft_methods.FULL:
        base.requires_grad_(False)
    model = peft_methods.wrap(base, spec.peft, seed=spec.seed)
    return model.train()


def trainable(model: Any) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def snapshot(model: Any) -> dict[str, torch.Tensor]:
    """A CPU float32 copy of the trainable parameters."""
    return {n: p.detach().float().cpu().clone() for n, p in trainable(model).items()}


@torch.no_grad()
def load_params(model: Any, state: dict[str, torch.Tensor]) -> None:
    params = trainable(model)
    missing = set(params) ^ set(state)
    if missing:
        raise ValueError(
            f"checkpoint does not match the model's trainable parameters: {sorted(missing)[:3]}"
        )
    for n, p in params.items():
        p.copy_(state[n].to(p.device, p.dtype))


def target_logits(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
) -> torch.Tensor:
    """Student logits [P, V] at (row, col) positions of a padded batch [B, L].

    Prompt-tuning adapters prepend virtual tokens to the output; the last L positions are
    always the real ones.
    """
    out = model(input_ids=input_ids, attention_mask=attention_mask)
    b, length = input_ids.shape
    logits = out.logits[:, -length:]
    # index_select on the flattened positions, not logits[rows, cols]: the backward of 2-D
    # advanced indexing is an accumulating index_put into a [B, L, V] zero tensor, which on
    # CPU made the backward pass the largest part of a student step.
    return logits.reshape(b * length, -1).index_select(0, rows * length + cols)


def replica_samples(n: int, replicas: int, r: int) -> range:
    return range(n * r // replicas, n * (r + 1) // replicas)


def lr_at(step: int, spec: StudentSpec, total_steps: int) -> float:
    """Linear warm-up, then cosine decay to 10% at ``total_steps`` (global steps of the track)."""
    warm = min(1.0, (step + 1) / max(1, spec.warmup_steps))
    progress = min(1.0, step / max(1, total_steps))
    return spec.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _to(batch_array: np.ndarray | None, dev: str) -> torch.Tensor | None:
    return None if batch_array is None else torch.from_numpy(batch_array).to(dev)


def train_replica(
    job: Job, track: str, shard: int, replica: int, on_progress: Progress | None = None
) -> dict[str, Any]:
    """Train replica ``replica`` of ``track`` on ``shard``; save its delta. Returns its stats."""
    spec = job.spec.student(track)
    loss_spec = job.spec.loss_for(spec)
    temperature = loss_spec.temperature or (
        job.spec.teacher.temperature if job.spec.teacher else 1.0
    )
    start = checkpoints.latest(job.paths, track)
    model = build(spec)
    if start is not None:
        load_params(model, start.params())
    before = snapshot(model)
    params = trainable(model)
    opt = torch.optim.AdamW(params.values(), lr=spec.lr, weight_decay=spec.weight_decay)
    if start is not None and (state := start.optimizer()) is not None:
        opt.load_state_dict(state)
    step0 = int(start.meta["step"]) if start else 0
    total_steps = int(job.info["total_steps"][track])
    dev = device()

    t0 = time.time()
    step, tokens, positions = 0, 0, 0
    curve: list[tuple[int, float, float, float]] = []
    with CacheReader(job.paths.shard(shard)) as reader:
        samples = replica_samples(len(reader), spec.replicas, replica)
        n_batches = math.ceil(len(samples) / spec.batch_size)
        rng = np.random.default_rng([spec.seed, shard, replica])
        for _ in range(spec.epochs):
            for b in reader.batches(samples, spec.batch_size, rng.permutation(n_batches)):
                ids, mask = (
                    torch.from_numpy(b.input_ids).to(dev),
                    torch.from_numpy(b.attention_mask).to(dev),
                )
                rows, cols = torch.from_numpy(b.rows).to(dev), torch.from_numpy(b.cols).to(dev)
                logits = target_logits(model, ids, mask, rows, cols)
                loss, parts = kd_loss(
                    logits,
                    torch.from_numpy(b.labels).to(dev),
                    _to(b.target_ids, dev),
                    _to(b.target_logprobs, dev),
                    alpha=loss_spec.alpha,
                    temperature=temperature,
                    kind=loss_spec.kind,
                    beta=loss_spec.beta,
                )
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params.values(), 1.0)
                for g in opt.param_groups:
                    g["lr"] = lr_at(step0 + step, spec, total_steps)
                opt.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                tokens += int(b.attention_mask.sum())
                positions += len(b.labels)
                curve.append((step0 + step, loss.item(), parts["ce"], parts["kd"]))
                if on_progress and (step % 5 == 0 or step == 1):
                    rate = tokens / max(1e-9, time.time() - t0)
                    on_progress(
                        {
                            "step": step,
                            "steps": n_batches * spec.epochs,
                            "loss": round(loss.item(), 4),
                            "tokens_per_s": round(rate, 1),
                        }
                    )
    seconds = time.time() - t0
    after = snapshot(model)
    delta = {n: after[n] - before[n] for n in after}
    stats = {
        "track": track,
        "shard": shard,
        "replica": replica,
        "start_version": start.version if start else 0,
        "steps": step,
        "tokens": tokens,
        "target_positions": positions,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(tokens / max(seconds, 1e-9), 1),
        "started_at": t0,
        "finished_at": time.time(),
        "curve": _thin(curve),
    }
    checkpoints.write_replica(job.paths, track, shard, replica, delta, opt.state_dict(), stats)
    log.info(
        "job %s track %s shard %d replica %d: %d steps, %.0f tok/s",
        job.id,
        track,
        shard,
        replica,
        step,
        stats["tokens_per_s"],
    )
    return stats


def _thin(curve: list[tuple[int, float, float, float]]) -> list[list[float]]:
    every = max(1, math.ceil(len(curve) / MAX_CURVE_POINTS))
    return [list(c) for c in curve[::every]]
