"""Score tokenized samples with the teacher: top-k log-probs at τ at the target positions."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.data import Sample, TokenizeStats, padded, read_records, tokenize_record
from core.models import on_device
from storage.cache import CacheWriter, ShardMeta

log = logging.getLogger(__name__)


@dataclass
class SparseTargets:
    ids: np.ndarray  # [P_j, k] int64
    logprobs: np.ndarray  # [P_j, k] float16


@torch.no_grad()
def score_batch(
    model: Any, samples: list[Sample], top_k: int, temperature: float
) -> list[SparseTargets]:
    """One padded forward over ``samples``; the teacher's top-k at each sample's target positions.

    Log-probs are normalised over the full vocabulary at τ before the top-k is taken, so the
    stored values are true probabilities and 1 − Σ is the tail mass the student loss needs.
    """
    dev = next(model.parameters()).device
    ids, mask, rows, cols, _ = on_device(padded(samples), dev)
    # Right padding + attention mask: positions of real tokens are unaffected by padding.
    hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
    head = model.get_output_embeddings()
    positions = [s.target_positions() for s in samples]
    # One LM-head matmul over the target positions of the whole batch: the [L, V] logits of
    # prompt tokens are never materialised. The top-k is taken on raw logits and normalised
    # with a logsumexp, so no [P, V] log-softmax tensor is written either.
    logits = head(hidden[rows, cols]).float()
    if temperature != 1.0:
        logits = logits / temperature
    # Sorted descending: the cache's delta coding of log-probs compresses best that way. (An
    # unsorted top-k plus a sort of the k winners measured no cheaper on CPU at V = 4,096.)
    top = torch.topk(logits, k=top_k, dim=-1)
    logprobs = (
        (top.values - torch.logsumexp(logits, dim=-1, keepdim=True)).to(torch.float16).cpu().numpy()
    )
    ids_np = top.indices.cpu().numpy()
    out: list[SparseTargets] = []
    start = 0
    for p in positions:
        out.append(SparseTargets(ids_np[start : start + len(p)], logprobs[start : start + len(p)]))
        start += len(p)
    return out


def write_shard(
    *,
    model: Any | None,
    tok: Any,
    dataset: Path,
    index: np.ndarray,
    record_ids: np.ndarray,
    out: Path,
    meta: ShardMeta,
    batch_size: int,
    max_length: int,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, int], TokenizeStats]:
    """Tokenize the shard's records, score them (unless ``model`` is None: data_parallel), stream to ``out``."""
    stats = TokenizeStats()
    with CacheWriter(out, meta) as writer:
        pending: list[Sample] = []

        def flush() -> None:
            targets = (
                score_batch(model, pending, meta.top_k, meta.temperature)
                if model is not None
                else [None] * len(pending)
            )
            for s, t in zip(pending, targets, strict=True):
                writer.add(
                    s.record_id,
                    np.asarray(s.input_ids),
                    np.asarray(s.target_positions()),
                    t.ids if t else None,
                    t.logprobs if t else None,
                )
            pending.clear()
            if on_progress:
                on_progress(writer.counts["samples"], writer.counts["tokens"])

        # Sort-free streaming: batches keep dataset order so record_ids stay ascending.
        for rid, record in read_records(dataset, index, record_ids):
            sample = tokenize_record(record, rid, tok, max_length, stats)
            if sample is not None:
                pending.append(sample)
            if len(pending) >= batch_size:
                flush()
        if pending:
            flush()
        counts = writer.counts
    return counts, stats
