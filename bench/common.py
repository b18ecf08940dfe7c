"""Shared set-up for the benchmarks: demo models and data, samples, batches, a clock."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from distillq.app import demo_models
from distillq.core.job.data import Sample, TokenizeStats, padded, tokenize_record
from distillq.core.job.models import on_device


@functools.lru_cache(maxsize=1)
def models(root: Path) -> dict[str, str]:
    """The shipped demo teacher and a seeded demo student under ``root``."""
    student = root / "models" / "demo-student"
    if not (student / "config.json").exists():
        demo_models.build_student(student)
    return {"teacher": str(demo_models.TEACHER_ASSET), "student": str(student)}


def dataset(root: Path, records: int) -> Path:
    path = root / "data" / f"stdlib-{records}.jsonl"
    if not path.exists():
        demo_models.write_demo_dataset(path, max_records=records)
    return path


def samples(path: Path, tok: Any, max_length: int = 256) -> list[Sample]:
    import json

    stats = TokenizeStats()
    out = []
    for i, line in enumerate(path.read_text().splitlines()):
        s = tokenize_record(json.loads(line), i, tok, max_length, stats)
        if s is not None:
            out.append(s)
    return out


def batches(samples: list[Sample], batch_size: int) -> Iterator[tuple[torch.Tensor, ...]]:
    """Right-padded (input_ids, attention_mask, rows, cols, labels), in dataset order."""
    for i in range(0, len(samples), batch_size):
        yield on_device(padded(samples[i : i + batch_size]), "cpu")


@contextmanager
def clock(out: dict[str, float], key: str) -> Iterator[None]:
    t = time.perf_counter()
    yield
    out[key] = time.perf_counter() - t


def tokens(samples: list[Sample]) -> int:
    return sum(len(s.input_ids) for s in samples)


def write_targets(
    path: Path, scored: list[tuple[Sample, Any]], vocab: int, k: int, draw: Any = None
) -> int:
    """Write (sample, SparseTargets) pairs as one cache shard (sampled ones where ``draw``, a
    ``core.targets.sampled.Sampled``, says how they were drawn); returns its target positions."""
    import numpy as np

    from distillq.core.targets.method import shard_fields
    from distillq.core.targets.topk import TopK
    from distillq.storage.cache import CacheWriter, ShardMeta

    method = draw or TopK(k)
    fields = shard_fields(method)
    meta = ShardMeta(
        0,
        vocab,
        temperature=1.0,
        teacher_fingerprint="t",
        tokenizer_fingerprint="tok",
        record_range=(0, len(scored)),
        **fields,
    )
    with CacheWriter(path, meta) as w:
        for s, t in scored:
            w.add(
                s.record_id,
                np.asarray(s.input_ids),
                np.asarray(s.target_positions()),
                t.ids,
                t.logprobs,
                columns=method.stored(t),
            )
        return w.counts["target_positions"]


def sgd_step(params: list[Any], opt: Any, lr: float) -> None:
    """Clip to norm 1, set the learning rate, step, clear: the students' step in the benches."""
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    for g in opt.param_groups:
        g["lr"] = lr
    opt.step()
    opt.zero_grad(set_to_none=True)
