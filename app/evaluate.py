"""Held-out loss: next-token CE over the training-target tokens of the eval slice."""

from __future__ import annotations

from typing import Any

import torch

from app.data import Sample, TokenizeStats, pad, read_records, tokenize_record
from app.job_store import Job


def eval_samples(job: Job, tok: Any) -> list[Sample]:
    stats = TokenizeStats()
    out = []
    for rid, record in read_records(job.paths.dataset, job.index, job.split.eval_ids()):
        s = tokenize_record(record, rid, tok, job.spec.sample_max_length, stats)
        if s is not None:
            out.append(s)
    return out


@torch.no_grad()
def eval_loss(model: Any, samples: list[Sample], batch_size: int = 8) -> dict[str, float]:
    """Token-weighted mean CE of ``model`` on ``samples`` (works for PEFT-wrapped models too)."""
    from app.student import target_logits

    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(samples), batch_size):
        ids, mask, rows, cols, labels = (t.to(dev) for t in pad(samples[i : i + batch_size]))
        logits = target_logits(model, ids, mask, rows, cols).float()
        total += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        count += len(labels)
    model.train(was_training)
    return {"loss": total / max(count, 1), "tokens": count}
