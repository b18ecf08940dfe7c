"""Build a student (+ adapter) and train one replica of a round on its slice of a shard.

A replica starts from the track's latest global checkpoint (or the seeded initial adapter),
trains on samples ``[r·n/R, (r+1)·n/R)`` of the shard for ``epochs`` passes, and saves its
parameter delta and optimizer state. Every ``checkpoint_every`` seconds it also saves where
it stands (weights, optimizer, RNG, data position), so a killed replica resumes there. The merge (``core/merge.py``) folds deltas into the
global checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from distillq.core import faults
from distillq.core.job.jobs import Job
from distillq.core.job.models import device, load_causal_lm, on_device
from distillq.core.job.spec import LossSpec, StudentSpec
from distillq.core.maths import head_loss
from distillq.core.maths.batching import PaddingCount, batch_groups
from distillq.core.maths.losses import Estimator, bucketed, kd_loss
from distillq.core.maths.policy_loss import sampled_token
from distillq.core.student import aligned, peft_methods, sample
from distillq.core.targets.shard import Batch, Shard
from distillq.errors import SpecError
from distillq.storage import checkpoints
from distillq.storage.records import OnProgress, ReplicaProgress, ReplicaStats

log = logging.getLogger(__name__)

MAX_CURVE_POINTS = 200


def build(spec: StudentSpec) -> Any:
    """The student model with its adapter (seeded), in train mode, on this process's device."""
    base = load_causal_lm(spec.model, what=f"student {spec.name!r} model")
    if peft_methods.resolve(spec.method) != peft_methods.FULL:
        base.requires_grad_(False)
    if spec.gradient_checkpointing:
        # Non-reentrant: it needs no input that requires grad, so frozen embeddings under an
        # adapter are fine; the KV cache is useless in training and clashes with it.
        base.config.use_cache = False
        base.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False}
        )
    model = peft_methods.wrap(base, spec.peft, seed=spec.seed)
    return model.train()


def autocast(spec: StudentSpec, dev: str) -> Any:
    """The forward's autocast context for ``spec.dtype`` on ``dev`` (a no-op for float32)."""
    kind = torch.device(dev).type
    if spec.dtype == "float32":
        return contextlib.nullcontext()
    if kind == "cuda" and not torch.cuda.is_bf16_supported():
        raise SpecError(
            f"students[{spec.name}].dtype=bfloat16: this GPU ({torch.cuda.get_device_name()}) "
            "has no bfloat16; set dtype: float32"
        )
    return torch.autocast(device_type=kind, dtype=torch.bfloat16)


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


def position_loss(
    model: Any,
    ids: torch.Tensor,
    mask: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    labels: torch.Tensor,
    target_ids: torch.Tensor | None,
    target_logprobs: torch.Tensor | None,
    loss: LossSpec,
    target_weights: torch.Tensor | None = None,
    estimator: Estimator = bucketed,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The track's loss at the target positions of a padded batch: the head and the loss in
    chunks of positions (``core/maths/head_loss.py``) wherever the model allows it;
    ``estimator``: the target method's (``Batch.estimator``)."""
    assert loss.temperature is not None
    loss_of: Callable[..., tuple[torch.Tensor, dict[str, float]]]
    if head_loss.chunkable(model):
        hidden, head = head_loss.target_hidden(model, ids, mask, rows, cols)
        loss_of = functools.partial(head_loss.chunked_loss, hidden, head)
    else:
        loss_of = functools.partial(kd_loss, target_logits(model, ids, mask, rows, cols))
    return loss_of(
        labels,
        target_ids,
        target_logprobs,
        alpha=loss.alpha,
        temperature=loss.temperature,
        kind=loss.kind,
        beta=loss.beta,
        weights=target_weights,
        estimator=estimator,
    )


def replica_samples(n: int, replicas: int, r: int) -> range:
    return range(n * r // replicas, n * (r + 1) // replicas)


def lr_at(step: int, spec: StudentSpec, total_steps: int) -> float:
    """Linear warm-up, then cosine decay to 10% at ``total_steps`` (global steps of the track)."""
    warm = min(1.0, (step + 1) / max(1, spec.warmup_steps))
    progress = min(1.0, step / max(1, total_steps))
    return spec.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _to(batch_array: np.ndarray | None, dev: str) -> torch.Tensor | None:
    return None if batch_array is None else torch.from_numpy(batch_array).to(dev)


@dataclass
class Trainer:
    """A replica's model and optimizer, restored from the track's latest global version."""

    spec: StudentSpec
    model: Any
    params: dict[str, torch.nn.Parameter]
    opt: torch.optim.Optimizer
    before: dict[str, torch.Tensor]  # trainable parameters at the start, for the delta
    start_version: int
    step0: int  # global optimizer steps of the track before this replica


def restore(job: Job, track: str) -> Trainer:
    """Build the student and load the track's latest global params and optimizer state."""
    spec = job.spec.student(track)
    start = checkpoints.latest(job.paths, track)
    model = build(spec)
    if start is not None:
        load_params(model, start.params())
    params = trainable(model)
    opt = torch.optim.AdamW(params.values(), lr=spec.lr, weight_decay=spec.weight_decay)
    if start is not None and (state := start.optimizer()) is not None:
        opt.load_state_dict(state)
    return Trainer(
        spec=spec,
        model=model,
        params=params,
        opt=opt,
        before=snapshot(model),
        start_version=start.version if start else 0,
        step0=start.meta.step if start else 0,
    )


def training_loss(job: Job, spec: StudentSpec) -> LossSpec:
    """The track's loss with τ resolved: its own, else the teacher cache's (1 without one)."""
    loss = job.spec.loss_for(spec)
    temperature = loss.temperature or (job.spec.teacher.temperature if job.spec.teacher else 1.0)
    return dataclasses.replace(loss, temperature=temperature)


def on_policy_loss(job: Job, spec: StudentSpec) -> LossSpec:
    """``JobSpec.on_policy_loss`` with τ resolved as ``training_loss`` resolves it."""
    tau = training_loss(job, spec).temperature
    return dataclasses.replace(job.spec.on_policy_loss(spec), temperature=tau)


def train_step(
    t: Trainer, batches: list[Batch], loss: LossSpec | Sequence[LossSpec], lr: float
) -> tuple[float, dict[str, float]]:
    """One optimizer step on the micro-batches ``batches`` (gradients accumulated); returns the
    mixed loss and its CE / KD parts.

    Each micro-batch's loss is a mean over its target positions; weighted by its share of the
    step's positions, the accumulated gradient is the one a single batch of all of them gives.
    ``loss`` comes from ``training_loss``, so its temperature is set; one per micro-batch
    where they differ (an on-policy batch's and a cache batch's)."""
    losses = [loss] * len(batches) if isinstance(loss, LossSpec) else list(loss)
    dev = device()
    total = sum(len(b.padded.labels) for b in batches)
    value, parts = 0.0, {"ce": 0.0, "kd": 0.0}
    for b, loss in zip(batches, losses, strict=True):
        assert loss.temperature is not None
        ids, mask, rows, cols, labels = on_device(b.padded, dev)
        if len(labels) == 0:
            continue
        with autocast(t.spec, dev):
            part, terms = position_loss(
                t.model,
                ids,
                mask,
                rows,
                cols,
                labels,
                _to(b.target_ids, dev),
                _to(b.target_logprobs, dev),
                loss,
                _to(b.target_weights, dev),
                b.estimator or bucketed,
            )
        w = len(labels) / total
        (w * part).backward()
        value += w * part.item()
        for key in parts:
            parts[key] += w * terms[key]
    if t.spec.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(t.params.values(), t.spec.max_grad_norm)
    for g in t.opt.param_groups:
        g["lr"] = lr
    t.opt.step()
    t.opt.zero_grad(set_to_none=True)
    return value, parts


@dataclass
class LoopStats:
    steps: int = 0
    tokens: int = 0
    positions: int = 0
    curve: list[tuple[int, float, float, float]] = field(default_factory=list)
    resumed_from: int = 0
    padding: PaddingCount = field(default_factory=PaddingCount)


Checkpoint = Callable[[LoopStats, int, int], None]
"""Save an in-round checkpoint: (stats so far, epoch, batches of that epoch done)."""


@dataclass(frozen=True)
class Part:
    """Samples of one file a replica trains on, with the loss they take: its cache slice, and
    in on-policy rounds the scored samples of its own (their batches never mix)."""

    reader: Shard
    samples: np.ndarray
    loss: LossSpec
    estimator: Estimator | None = None
    """Instead of the reader's method's (``on_policy.estimator: token``)."""


def _batch(part: Part, group: np.ndarray) -> Batch:
    b = part.reader.batch_of(group)
    return b if part.estimator is None else dataclasses.replace(b, estimator=part.estimator)


def train_loop(
    t: Trainer,
    parts: list[Part],
    total_steps: int,
    rng: np.random.Generator,
    on_progress: OnProgress | None = None,
    resume: ReplicaProgress | None = None,
    checkpoint: Checkpoint | None = None,
) -> LoopStats:
    """``spec.epochs`` passes over ``samples`` in a seeded batch order.

    ``resume``: continue after the batches an interrupted delivery checkpointed (the batch
    order is drawn from the same seeded generator, so the rest of the run is the one the
    interrupted delivery would have made). ``checkpoint`` is called every
    ``checkpoint_every`` seconds (or ``checkpoint_every_steps`` steps)."""
    spec = t.spec
    groups: list[tuple[Part, np.ndarray]] = []
    padding = PaddingCount()
    for part in parts:
        lengths = part.reader.lengths(part.samples)
        local = batch_groups(lengths, spec.batch_size, spec.group_by_length)
        groups += [(part, part.samples[g]) for g in local]
        padding.add(lengths, local, spec.batch_size)
    n_batches = len(groups)
    steps_per_epoch = math.ceil(n_batches / spec.grad_accum)
    out = LoopStats()
    if resume is not None:
        out = LoopStats(
            steps=resume.steps,
            tokens=resume.tokens,
            positions=resume.positions,
            curve=[(int(c[0]), c[1], c[2], c[3]) for c in resume.curve],
            resumed_from=resume.steps,
        )
    out.padding = padding
    t0 = last_save = time.time()
    for epoch in range(spec.epochs):
        order = rng.permutation(n_batches)  # drawn every epoch, resumed or not: same stream
        if resume is not None and epoch < resume.epoch:
            continue
        done = resume.batch if resume is not None and epoch == resume.epoch else 0
        for i in range(done, n_batches, spec.grad_accum):
            faults.hit(f"replica_step:{spec.name}:{out.steps}")
            chosen = [groups[b] for b in order[i : i + spec.grad_accum]]
            micro = [_batch(part, g) for part, g in chosen]
            lr = lr_at(t.step0 + out.steps, spec, total_steps)
            value, terms = train_step(t, micro, [part.loss for part, _ in chosen], lr)
            out.steps += 1
            out.tokens += sum(int(b.padded.attention_mask.sum()) for b in micro)
            out.positions += sum(len(b.padded.labels) for b in micro)
            out.curve.append((t.step0 + out.steps, value, terms["ce"], terms["kd"]))
            if on_progress and (out.steps % 5 == 0 or out.steps == 1):
                on_progress(
                    {
                        "step": out.steps,
                        "steps": steps_per_epoch * spec.epochs,
                        "loss": round(value, 4),
                        "ce": round(terms["ce"], 4),
                        "kd": round(terms["kd"], 4),
                        "tokens_per_s": round(
                            (out.tokens - (resume.tokens if resume else 0))
                            / max(1e-9, time.time() - t0),
                            1,
                        ),
                    }
                )
            due = (
                out.steps % spec.checkpoint_every_steps == 0
                if spec.checkpoint_every_steps
                else time.time() - last_save >= spec.checkpoint_every
            )
            done_now = min(n_batches, i + spec.grad_accum)
            last_step = epoch == spec.epochs - 1 and done_now == n_batches
            if checkpoint is not None and due and not last_step:
                checkpoint(out, epoch, done_now)
                last_save = time.time()
    return out


def save(
    job: Job, t: Trainer, shard: int, replica: int, loop: LoopStats, started: float
) -> ReplicaStats:
    """Write the replica's delta, optimizer state and stats (last: they mark it complete)."""
    seconds = time.time() - started
    after = snapshot(t.model)
    delta = {n: after[n] - t.before[n] for n in after}
    padding, padding_ungrouped = loop.padding.fractions()
    stats = ReplicaStats(
        track=t.spec.name,
        shard=shard,
        replica=replica,
        start_version=t.start_version,
        steps=loop.steps,
        tokens=loop.tokens,
        target_positions=loop.positions,
        seconds=round(seconds, 3),
        tokens_per_s=round(loop.tokens / max(seconds, 1e-9), 1),
        started_at=started,
        finished_at=time.time(),
        curve=_thin(loop.curve),
        resumed_from=loop.resumed_from,
        padding=padding,
        padding_ungrouped=padding_ungrouped,
    )
    checkpoints.write_replica(
        job.paths, t.spec.name, shard, replica, delta, t.opt.state_dict(), stats
    )
    checkpoints.drop_progress(job.paths, t.spec.name, shard, replica)
    return stats


def _resume_point(job: Job, t: Trainer, shard: int, replica: int) -> ReplicaProgress | None:
    """Load an in-round checkpoint of this replica into ``t``, if one from the same start
    version exists (one from an older version belongs to a round that was redone)."""
    found = checkpoints.read_progress(job.paths, t.spec.name, shard, replica)
    if found is None:
        return None
    meta, params, state = found
    if meta.start_version != t.start_version:
        checkpoints.drop_progress(job.paths, t.spec.name, shard, replica)
        return None
    load_params(t.model, params)
    t.opt.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    log.info(
        "job %s track %s shard %d replica %d: resuming after step %d",
        job.id,
        t.spec.name,
        shard,
        replica,
        meta.steps,
    )
    return meta


def _checkpointer(job: Job, t: Trainer, shard: int, replica: int) -> Checkpoint:
    def save_progress(loop: LoopStats, epoch: int, batch: int) -> None:
        meta = ReplicaProgress(
            start_version=t.start_version,
            steps=loop.steps,
            epoch=epoch,
            batch=batch,
            tokens=loop.tokens,
            positions=loop.positions,
            curve=[list(c) for c in loop.curve],
        )
        state = {"optimizer": t.opt.state_dict(), "torch_rng": torch.get_rng_state()}
        checkpoints.write_progress(
            job.paths, t.spec.name, shard, replica, snapshot(t.model), state, meta
        )

    return save_progress


def train_replica(
    job: Job, track: str, shard: int, replica: int, on_progress: OnProgress | None = None
) -> ReplicaStats:
    """Train replica ``replica`` of ``track`` on ``shard``; save its delta. Returns its stats.

    Continues from the replica's in-round checkpoint where an interrupted delivery left one."""
    t = restore(job, track)
    started = time.time()
    resume = _resume_point(job, t, shard, replica)
    loss = training_loss(job, t.spec)
    with contextlib.ExitStack() as stack:
        reader = stack.enter_context(Shard(aligned.shard_for(job, track, shard)))
        mine = np.asarray(replica_samples(len(reader), t.spec.replicas, replica), dtype=np.int64)
        parts = [Part(reader, mine, loss)]
        if t.spec.on_policy is not None:
            rids = reader.record_ids()
            op = t.spec.on_policy
            own_loss = on_policy_loss(job, t.spec)
            estimator = sampled_token if op.estimator == "token" else None
            parts = [Part(reader, mine[~sample.chosen(op, shard, rids[mine])], loss)]
            for p in t.spec.parts_of(replica):
                own = stack.enter_context(Shard(job.paths.onpolicy_scored(track, shard, p)))
                parts.append(Part(own, np.arange(len(own)), own_loss, estimator))
        loop = train_loop(
            t,
            parts,
            job.info.total_steps[track],
            np.random.default_rng([t.spec.seed, shard, replica]),
            on_progress,
            resume=resume,
            checkpoint=_checkpointer(job, t, shard, replica),
        )
    stats = save(job, t, shard, replica, loop, started)
    log.info(
        "job %s track %s shard %d replica %d: %d steps (%d resumed), %.0f tok/s",
        job.id,
        track,
        shard,
        replica,
        stats.steps,
        stats.resumed_from,
        stats.tokens_per_s,
    )
    return stats


def _thin(curve: list[tuple[int, float, float, float]]) -> list[list[float]]:
    every = max(1, math.ceil(len(curve) / MAX_CURVE_POINTS))
    return [list(c) for c in curve[::every]]
