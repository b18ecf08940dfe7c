"""On-policy rounds: the plain functions behind the sample and score tasks, and the held-out
measure the report quotes (docs/DESIGN.md §6c).

Per round of an on-policy track, part r (one per replica):

    sample (student queue): the track's current version continues the prompts of replica r's
        slice that ``sample.chosen`` picks  ─▶ students/<t>/onpolicy/round-N/samples-r.h5
    score (teacher queue): the teacher scores those samples (top-k, and each position's own
        token where the teacher can)       ─▶ students/<t>/onpolicy/round-N/scored-r.h5
    train (student queue): replica r learns on its cache batches and on scored-r.h5

Each file is a cache file like a teacher shard (atomic, with a sha256 sidecar, readable with
h5py and ``distillq show``), so a killed task is redone alone and a finished phase is never
recomputed. Every function is idempotent: it returns the verified file's stats if there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from distillq.core import faults
from distillq.core.job.data import Prompt, Sample, TokenizeStats
from distillq.core.job.jobs import Job
from distillq.core.job.models import load_tokenizer
from distillq.core.job.spec import LossSpec, ServedTeacherSpec
from distillq.core.maths.batching import PaddingCount
from distillq.core.student import evaluate, sample, train
from distillq.core.targets import registry as targets
from distillq.core.targets.method import shard_fields
from distillq.core.targets.records import SparseTargets
from distillq.core.targets.topk import token_column, token_logprobs
from distillq.core.teacher.local import Item, Teacher, write_items
from distillq.core.teacher.make import has_token_column, make_teacher
from distillq.core.teacher.records import KINDS, Target
from distillq.storage import cache, checkpoints, records
from distillq.storage.atomic import clear_stale
from distillq.storage.cache import CacheWriter, ShardMeta
from distillq.storage.layout import sidecar
from distillq.storage.records import (
    EvalResult,
    OnPolicyEval,
    OnPolicyExample,
    OnProgress,
    ShardStats,
)

log = logging.getLogger(__name__)


def prompts(job: Job, track: str, round_: int, part: int) -> list[Prompt]:
    """The prompts part ``part`` of round ``round_`` samples: of the records
    ``sample.chosen`` picks in its replica's slice of the round's cache shard, its chunk
    (``on_policy.chunks`` equal pieces, in order)."""
    spec = job.spec.student(track)
    assert spec.on_policy is not None
    chunks = spec.on_policy.chunks
    with cache.CacheReader(job.paths.shard(job.cache_shard(round_))) as reader:
        idx = np.asarray(train.replica_samples(len(reader), spec.replicas, part // chunks))
        rids = reader.record_ids()[idx] if len(idx) else np.zeros(0, dtype=np.int64)
        pick = np.array_split(idx[sample.chosen(spec.on_policy, round_, rids)], chunks)[
            part % chunks
        ]
        return [
            Prompt(
                reader.record_id(int(j)),
                sample.prompt_of(reader.sample_ids(int(j)), reader.positions_of(int(j))),
            )
            for j in pick
        ]


def _record_range(record_ids: list[int]) -> tuple[int, int]:
    """A part's ``ShardMeta.record_range`` (its records need not be contiguous)."""
    return (min(record_ids, default=0), 1 + max(record_ids, default=-1))


def _stats(shard: int, started: float, counts: dict[str, int], **extra: Any) -> ShardStats:
    seconds = time.time() - started
    return ShardStats(
        shard=shard,
        samples=counts["samples"],
        tokens=counts["tokens"],
        target_positions=counts["target_positions"],
        seconds=round(seconds, 3),
        tokens_per_s=round(counts["tokens"] / max(seconds, 1e-9), 1),
        started_at=started,
        finished_at=time.time(),
        **extra,
    )


def sample_part(
    job: Job, track: str, round_: int, part: int, on_progress: OnProgress | None = None
) -> ShardStats:
    """Write what the track's current version says to part ``part``'s prompts.

    The version is the one the round trains from: rounds of a track run one after another,
    so no merge lands between a round's launch and its training (staleness is 0 by
    construction)."""
    out = job.paths.onpolicy_samples(track, round_, part)
    if (done := cache.verified(out, sidecar(out))) is not None:
        return done
    faults.hit(f"sample:{track}:{round_}:{part}")
    clear_stale(out)
    spec = job.spec.student(track)
    assert spec.on_policy is not None
    started = time.time()
    todo = prompts(job, track, round_, part)
    latest = checkpoints.latest(job.paths, track)
    model = train.build(spec)
    if latest is not None:
        train.load_params(model, latest.params())
    tok = load_tokenizer(spec.model)
    version = latest.version if latest else 0
    meta = ShardMeta(
        shard=round_,
        vocab_size=job.info.fingerprints.vocab_size or len(tok),
        width=0,
        temperature=spec.on_policy.temperature,
        teacher_fingerprint="",
        tokenizer_fingerprint=job.info.fingerprints.students[track].tokenizer,
        record_range=_record_range([p.record_id for p in todo]),
        source=f"student {track} v{version}",
    )
    made = sample.continuations(
        model, tok, todo, spec.on_policy, round_, job.spec.sample_max_length
    )
    if isinstance(job.spec.teacher, ServedTeacherSpec):
        made = ((canonical(s, tok), text) for s, text in made)
    with CacheWriter(out, meta) as writer:
        for n, (s, text) in enumerate(made, 1):
            writer.add(
                s.record_id,
                np.asarray(s.input_ids),
                np.asarray(s.target_positions()),
                None,
                None,
                text=text,
                kind=KINDS.index("generated"),
            )
            if on_progress and (n % 4 == 0 or n == 1):
                on_progress(
                    {
                        "phase": "sample",
                        "samples": n,
                        "of": len(todo) * spec.on_policy.samples_per_prompt,
                    }
                )
        counts = writer.counts
    record = cache.write_stats(
        sidecar(out), out, _stats(round_, started, counts, source=meta.source)
    )
    log.info(
        "job %s track %s round %d part %d: %d samples from v%d, %.0f tok/s",
        job.id,
        track,
        round_,
        part,
        record.samples,
        version,
        record.tokens_per_s,
    )
    return record


def canonical(s: Sample, tok: Any) -> Sample:
    """The sample tokenized as the text it spells: a server takes text and tokenizes it
    itself, and a student's draws need not be the tokenizer's own spelling ("j" "j" where it
    writes "jj"; a prompt's last "de" and a drawn "c" where it writes "dec"), which the echo
    check refuses. The targets start after the prompt tokens the new spelling keeps, so the
    student learns on its own text in the tokenizer's spelling."""
    start = s.target_positions()[0] + 1 if s.target_positions() else len(s.input_ids)
    eos = tok.eos_token_id
    ids = list(s.input_ids)
    stopped = eos is not None and len(ids) > start and ids[-1] == eos
    body = ids[:-1] if stopped else ids
    again = list(
        tok(str(tok.decode(body, skip_special_tokens=False)), add_special_tokens=False)["input_ids"]
    )
    keep = 0
    while keep < min(start, len(again)) and again[keep] == ids[keep]:
        keep += 1
    keep = max(1, keep)
    again += [eos] if stopped else []
    return Sample(s.record_id, again, [False] * keep + [True] * (len(again) - keep))


def read_samples(path: Path) -> tuple[list[Sample], list[str]]:
    """The samples of a samples file, as the teacher takes them, and their text."""
    with cache.CacheReader(path) as reader:
        out, texts = [], []
        for j in range(len(reader)):
            ids = [int(t) for t in reader.sample_ids(j)]
            mask = [False] * len(ids)
            for p in reader.positions_of(j):
                mask[int(p) + 1] = True
            out.append(Sample(reader.record_id(j), ids, mask))
            texts.append(reader.generated(j)[1])
        return out, texts


class _Written:
    """A teacher whose targets are told as the student's writing: the scored file keeps the
    student's text and says its samples were generated (``distillq show``, the report).
    ``add_token``: the teacher lists no column for each position's own token (a server):
    append it, its log-prob unknown (−inf), so every scored file ends with that column."""

    def __init__(self, inner: Teacher, texts: list[str], add_token: bool) -> None:
        self.inner, self.texts, self.add_token = inner, texts, add_token
        self.source = inner.source

    def run(
        self, items: Iterable[Item], padding: PaddingCount | None = None
    ) -> Iterator[list[Target]]:
        for made, text in zip(self.inner.run(items, padding), self.texts, strict=True):
            yield [
                dataclasses.replace(
                    t,
                    kind="generated",
                    text=text,
                    targets=self._token(t) if self.add_token else t.targets,
                )
                for t in made
            ]

    @staticmethod
    def _token(t: Target) -> SparseTargets | None:
        if t.targets is None:
            return None
        ids = np.asarray(t.sample.input_ids)
        tokens = ids[np.asarray(t.sample.target_positions(), dtype=np.int64) + 1]
        return token_column(t.targets, tokens, np.full(len(tokens), -np.inf))


def score_part(
    job: Job, track: str, round_: int, part: int, on_progress: OnProgress | None = None
) -> ShardStats | None:
    """Have the teacher score part ``part``'s samples; write them with its targets. None: the
    samples are not on storage (sample the part again)."""
    out = job.paths.onpolicy_scored(track, round_, part)
    if (done := cache.verified(out, sidecar(out))) is not None:
        return done
    src = job.paths.onpolicy_samples(track, round_, part)
    if cache.verified(src, sidecar(src)) is None:
        # Its sample task queued this one after writing the file: one that fails its checksum
        # now was damaged on storage. The caller queues the sampling again.
        sidecar(src).unlink(missing_ok=True)
        return None
    faults.hit(f"score:{track}:{round_}:{part}")
    clear_stale(out)
    t, fp = job.spec.teacher, job.info.fingerprints
    assert t is not None
    items, texts = read_samples(src)
    started = time.time()
    method = targets.build(t)
    token_column = has_token_column(job)
    fields = shard_fields(method)
    fields["width"] += 1  # each position's own token, last (``sampled_token`` reads it there)
    meta = ShardMeta(
        shard=round_,
        vocab_size=fp.vocab_size or 0,
        temperature=t.temperature,
        teacher_fingerprint=fp.teacher,
        tokenizer_fingerprint=fp.tokenizer,
        record_range=_record_range([s.record_id for s in items]),
        **fields,
    )

    def progress(samples: int, tokens: int) -> None:
        if on_progress:
            on_progress({"phase": "score", "samples": samples, "of": len(items), "tokens": tokens})

    with contextlib.ExitStack() as stack:
        teacher, tok = make_teacher(job, stack, token_column=token_column)
        assert teacher is not None
        meta = dataclasses.replace(
            meta, vocab_size=meta.vocab_size or len(tok), source=teacher.source
        )
        counts, made = write_items(
            teacher=_Written(teacher, texts, add_token=not token_column),
            items=items,
            out=out,
            meta=meta,
            method=method,
            stats=TokenizeStats(),
            on_progress=progress,
        )
    record = cache.write_stats(
        sidecar(out),
        out,
        _stats(
            round_,
            started,
            counts,
            k=meta.width,
            source=meta.source,
            fallback_positions=made.fallback_positions,
            dropped_entries=made.dropped_entries,
        ),
    )
    log.info(
        "job %s track %s round %d part %d: %d samples scored, %.0f tok/s",
        job.id,
        track,
        round_,
        part,
        record.samples,
        record.tokens_per_s,
    )
    return record


HELDOUT_PROMPTS = 8
"""Held-out prompts the report's before/after measure continues (bounded: finalize pays it)."""


def heldout(job: Job, track: str, before: Any, after: Any) -> OnPolicyEval:
    """The teacher's log-prob per token, and KL(student ‖ teacher), of the student's greedy
    continuations of held-out prompts, for the untrained (``before``) and trained model."""
    import torch

    spec = job.spec.student(track)
    assert spec.on_policy is not None
    greedy = dataclasses.replace(spec.on_policy, temperature=0.0, samples_per_prompt=1)
    tok = load_tokenizer(spec.model)
    held = evaluate.eval_samples(job, tok, HELDOUT_PROMPTS)
    todo = [
        Prompt(s.record_id, ids)
        for s, (ids, _) in zip(held, evaluate.prompts(held, len(held)), strict=True)
    ]
    tau = train.training_loss(job, spec).temperature or 1.0
    made = {
        name: list(sample.continuations(m, tok, todo, greedy, 0, job.spec.sample_max_length))
        for name, m in (("before", before), ("after", after))
    }
    got: dict[str, tuple[float | None, float | None]] = {}
    positions = unlisted = 0
    with contextlib.ExitStack() as stack:
        teacher, _ = make_teacher(job, stack, token_column=has_token_column(job))
        assert teacher is not None
        for name, rows in made.items():
            model = before if name == "before" else after
            model.eval()  # finalize hands over a model in train mode: no dropout in a measure
            lp_sum = kl_sum = 0.0
            lp_n = kl_n = 0
            for targets in teacher.run([s for s, _ in rows]):
                for t in targets:
                    if t.targets is None or not t.sample.target_positions():
                        continue
                    pos = np.asarray(t.sample.target_positions())
                    ids = np.asarray(t.sample.input_ids)
                    tokens = ids[pos + 1]
                    lps, found = token_logprobs(t.targets.ids, t.targets.logprobs, tokens)
                    lp_sum += float(lps[found].sum())
                    lp_n += int(found.sum())
                    positions += len(pos)
                    unlisted += int((~found).sum())
                    with torch.no_grad():
                        x = torch.as_tensor(ids[None], dtype=torch.long)
                        _, terms = train.position_loss(
                            model,
                            x,
                            torch.ones_like(x),
                            torch.zeros(len(pos), dtype=torch.long),
                            torch.as_tensor(pos, dtype=torch.long),
                            torch.as_tensor(tokens, dtype=torch.long),
                            torch.as_tensor(t.targets.ids, dtype=torch.long),
                            torch.as_tensor(t.targets.logprobs.astype(np.float32)),
                            LossSpec(kind="reverse_kl", alpha=0.0, temperature=tau),
                        )
                    kl_sum += terms["kd"] * len(pos)  # the divergence itself (τ² is the loss's)
                    kl_n += len(pos)
            got[name] = (lp_sum / lp_n if lp_n else None, kl_sum / kl_n if kl_n else None)
    teacher_texts = {}
    if (tev := records.read_if_exists(EvalResult, job.paths.teacher_eval)) is not None:
        teacher_texts = {g.prompt: g.text for g in tev.generations}
    examples = [
        OnPolicyExample(
            prompt=(text := str(tok.decode(p.input_ids))),
            before=b_text,
            after=a_text,
            teacher=teacher_texts.get(text, ""),
        )
        for p, (_, b_text), (_, a_text) in list(
            zip(todo, made["before"], made["after"], strict=True)
        )[:3]
    ]
    return OnPolicyEval(
        teacher_logprob_before=_round(got["before"][0]),
        teacher_logprob_after=_round(got["after"][0]),
        reverse_kl_before=_round(got["before"][1]),
        reverse_kl_after=_round(got["after"][1]),
        positions=positions,
        unlisted=unlisted,
        examples=examples,
    )


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 5)
