"""Held-out loss: next-token CE over the training-target tokens of the eval slice."""

from __future__ import annotations

from typing import Any

import torch

from core.data import Sample, TokenizeStats, padded, read_records, tokenize_record
from core.job import Job
from core.models import on_device
from core.student import target_logits
from storage.records import EvalResult


def eval_samples(job: Job, tok: Any) -> list[Sample]:
    stats = TokenizeStats()
    out = []
    for rid, record in read_records(job.paths.dataset, job.index, job.split.eval_ids()):
        s = tokenize_record(record, rid, tok, job.spec.sample_max_length, stats)
        if s is not None:
            out.append(s)
    return out


@torch.no_grad()
def eval_loss(model: Any, samples: list[Sample], batch_size: int = 8) -> EvalResult:
    """Token-weighted mean CE of ``model`` on ``samples`` (works for PEFT-wrapped models too)."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(samples), batch_size):
        ids, mask, rows, cols, labels = on_device(padded(samples[i : i + batch_size]), dev)
        logits = target_logits(model, ids, mask, rows, cols).float()
        total += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        count += len(labels)
    model.train(was_training)
    return EvalResult(loss=total / max(count, 1), tokens=count)
