"""Held-out evaluation: next-token CE over the training-target tokens of the eval slice, and
greedy generations on held-out prompts, so a report shows what a model learned."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distillq.core.align.tokens import vocab_bytes
from distillq.core.job.data import (
    Sample,
    TokenizeStats,
    padded,
    read_records,
    tokenize_record,
)
from distillq.core.job.jobs import Job
from distillq.core.job.models import on_device, tokenizer_fingerprint
from distillq.core.job.spec import LossSpec, StudentSpec
from distillq.core.student import aligned, sample
from distillq.core.student import train as student
from distillq.core.targets.shard import Shard
from distillq.storage.cache import CacheReader
from distillq.storage.records import EvalResult, Generation

GENERATION_PROMPTS = 3
"""Held-out prompts every model of a job continues for the report."""
NEW_TOKENS = 40


def eval_samples(job: Job, tok: Any, limit: int | None = None) -> list[Sample]:
    """The held-out slice's samples (its first ``limit`` records when given).

    Where the teacher writes the responses, the held-out samples are the ones it wrote
    (``teacher/eval.h5``); none until the teacher eval has written them."""
    t = job.spec.teacher
    if t is not None and t.generate is not None:
        if tokenizer_fingerprint(tok) == job.info.fingerprints.tokenizer:
            return cached_samples(job.paths.teacher_eval_cache, limit)
        return _retokenized(job, tok, limit)  # a student of another tokenizer
    stats = TokenizeStats()
    out = []
    ids = job.split.eval_ids()[:limit]
    for rid, record in read_records(job.paths.dataset, job.index, ids):
        s = tokenize_record(record, rid, tok, job.spec.sample_max_length, stats)
        if s is not None:
            out.append(s)
    return out


def _retokenized(job: Job, tok: Any, limit: int | None) -> list[Sample]:
    """The teacher's written held-out responses, in ``tok``'s tokens."""
    path = job.paths.teacher_eval_cache
    if not path.exists():
        return []
    stats, out = TokenizeStats(), []
    with CacheReader(path) as r:
        n = len(r) if limit is None else min(limit, len(r))
        records = aligned.records_of(job, r, n)
        for j in range(n):
            s = aligned.retokenized(job, r, j, records, tok, stats)
            if s is not None:
                out.append(s)
    return out


def cached_samples(path: Path, limit: int | None = None) -> list[Sample]:
    """Samples of a cache file, rebuilt from its ids and target positions."""
    if not path.exists():
        return []
    with Shard(path) as r:
        out = []
        for j in range(len(r) if limit is None else min(limit, len(r))):
            lo, hi = r.offsets[j], r.offsets[j + 1]
            ids = r.sample_ids(j).tolist()
            mask = [False] * len(ids)
            for p in r.positions[(r.positions >= lo) & (r.positions < hi)] - lo:
                mask[int(p) + 1] = True
            out.append(Sample(r.record_id(j), ids, mask))
    return out


def cached_teacher_loss(path: Path) -> EvalResult:
    """A served teacher's held-out CE, from its cached log-probs: −log p(true token) where the
    server listed the true token (positions where it did not are left out and counted)."""
    with Shard(path) as r:
        batch = r.batch(0, len(r))
        labels = batch.padded.labels
        assert batch.target_ids is not None and batch.target_logprobs is not None
        lps = batch.target_logprobs
        finite = np.isfinite(lps)
        # A CE-fallback row (the true token alone at log-prob 0) is no teacher measurement.
        fallback = (finite.sum(axis=1) == 1) & (lps[:, 0] == 0.0)
        listed = (batch.target_ids == labels[:, None]) & finite
        found = listed.any(axis=1) & ~fallback
        nll = -np.where(listed, batch.target_logprobs, 0.0).sum(axis=1)
        return EvalResult(
            loss=float(nll[found].mean()) if found.any() else float("nan"),
            tokens=int(found.sum()),
            samples=len(r),
        )


def with_bytes(result: EvalResult, tok: Any, samples: list[Sample]) -> EvalResult:
    """``result`` with the bytes of ``samples``' target tokens, where its loss covers every one
    of them (a served teacher's may not: then bits per byte stay unknown)."""
    vb = vocab_bytes(tok)
    targets = [s.input_ids[p + 1] for s in samples for p in s.target_positions()]
    if len(targets) != result.tokens:
        return result
    size = len(vb)
    return dataclasses.replace(
        result, bytes=sum(len(vb[t] or b"") if t < size else 0 for t in targets)
    )


@torch.no_grad()
def eval_loss(model: Any, samples: list[Sample], batch_size: int = 8) -> EvalResult:
    """Token-weighted mean CE of ``model`` on ``samples`` (works for PEFT-wrapped models too)."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    total, count = 0.0, 0
    ce_only = LossSpec(alpha=1.0, temperature=1.0)
    for i in range(0, len(samples), batch_size):
        ids, mask, rows, cols, labels = on_device(padded(samples[i : i + batch_size]), dev)
        mean, _ = student.position_loss(model, ids, mask, rows, cols, labels, None, None, ce_only)
        total += float(mean) * len(labels)
        count += len(labels)
    model.train(was_training)
    return EvalResult(loss=total / max(count, 1), tokens=count, samples=len(samples))


def student_losses(
    spec: StudentSpec, params: list[dict[str, torch.Tensor]], samples: list[Sample]
) -> list[float]:
    """Held-out loss of track ``spec`` under each set of trainable parameters, on one model."""
    model = student.build(spec)
    out = []
    for p in params:
        student.load_params(model, p)
        out.append(eval_loss(model, samples).loss)
    return out


def prompts(
    samples: list[Sample], n: int = GENERATION_PROMPTS
) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, reference ids) for the first ``n`` held-out samples.

    A sample with a prompt (prompt/response, chat) is cut where its first target starts; a
    text record, where everything is a target, after ``sample.PROMPT_TOKENS`` tokens (or half of it).
    """
    out = []
    for s in samples[:n]:
        cut = len(sample.prompt_of(s.input_ids, s.target_positions()))
        out.append((s.input_ids[:cut], s.input_ids[cut : cut + NEW_TOKENS]))
    return out


@torch.no_grad()
def generate(model: Any, tok: Any, samples: list[Sample]) -> list[Generation]:
    """Greedy continuations of the held-out prompts of ``samples`` (``NEW_TOKENS`` each)."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    out = []
    for prompt, reference in prompts(samples):
        ids = torch.tensor([prompt], device=dev)
        seq = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
        new = seq[0, len(prompt) :]  # generate returns the prompt, then what it added
        out.append(
            Generation(
                prompt=tok.decode(prompt),
                reference=tok.decode(reference),
                text=tok.decode(new.tolist()),
            )
        )
    model.train(was_training)
    return out
