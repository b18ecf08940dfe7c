"""The teacher stage's plain functions: score samples, or write responses for prompt-only ones,
and stream them with their sparse targets into a cache shard.

A teacher is anything with ``run(items) -> Iterator[list[Target]]``: for every item in order,
the samples it becomes with their targets. ``LocalTeacher`` runs a transformers model here;
``core.served.EndpointTeacher`` asks a server. The shard writer does not know which.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from distillq.core.job.data import (
    Prompt,
    Sample,
    TokenizeStats,
    encode_prompt,
    is_prompt_only,
    padded,
    read_records,
    tokenize_record,
)
from distillq.core.job.models import on_device
from distillq.core.job.spec import GenerateSpec
from distillq.core.maths.batching import PaddingCount, batch_groups
from distillq.core.maths.head_loss import LOGITS_BUDGET_BYTES, chunk_rows
from distillq.core.targets.method import TargetMethod, concat
from distillq.core.targets.records import SparseTargets
from distillq.core.targets.topk import with_token_column
from distillq.core.teacher.generation import generate_batch
from distillq.core.teacher.records import KINDS, Target
from distillq.storage.cache import CacheWriter, ShardMeta

log = logging.getLogger(__name__)


Item = Sample | Prompt


class Teacher(Protocol):
    source: str
    """Where targets come from, for the shard's stats ("local", "endpoint llama_cpp URL")."""

    def run(
        self, items: Iterable[Item], padding: PaddingCount | None = None
    ) -> Iterator[list[Target]]:
        """``padding``: where a teacher that pads batches counts it (a server pads nothing)."""
        ...


CACHE_ROWS = 1024
"""At most this many positions per chunk, however small V: a [1024, V] chunk stays near the
CPU's caches while the log-softmax and the top-k each read it (at V = 4,096 a logsumexp took
1.5x as long over 5,461-row chunks)."""


def chunk_positions(vocab: int, budget: int = LOGITS_BUDGET_BYTES, copies: int = 3) -> int:
    """Positions per teacher head chunk: ~3 float32 [chunk, V] copies live at once (the
    logits, their log-softmax and the top-k's temporaries; the student's loss needs 4, the
    draws of sampled targets 5: their probabilities and float64 cumulative sums)."""
    return min(CACHE_ROWS, chunk_rows(vocab, budget, copies=copies))


@torch.no_grad()
def score_batch(
    model: Any,
    samples: list[Sample],
    method: TargetMethod,
    temperature: float,
    budget: int = LOGITS_BUDGET_BYTES,
    limit: int | None = None,
    token_column: bool = False,
) -> list[SparseTargets]:
    """One padded forward over ``samples``; the targets ``method`` keeps (``core/targets/``)
    at each sample's target positions.

    Log-probs are normalised over the full vocabulary at τ before the method selects, so the
    stored values are true probabilities and 1 − Σ is the tail mass the student loss needs.
    The LM head, log-softmax and selection run over chunks of positions sized from V and
    ``budget``: memory O(chunk × V), whatever the batch, with the same output as one pass.
    ``limit``: the tokenizer's size; the head's rows past it (a vocabulary padded to a multiple
    of 64 or 128) get no mass, so no target names an id a smaller student head lacks.
    ``token_column``: one column more, each position's own next token (``with_token_column``).
    """
    dev = next(model.parameters()).device
    ids, mask, rows, cols, _ = on_device(padded(samples), dev)
    # Right padding + attention mask: positions of real tokens are unaffected by padding.
    hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
    head = model.get_output_embeddings()
    positions = [s.target_positions() for s in samples]
    # The LM head only at the target positions of the batch, a chunk at a time: the [L, V]
    # logits of prompt tokens are never materialised, nor [P, V] for the whole batch.
    at = hidden[rows, cols]
    u = method.uniforms([(s.record_id, len(p), 0) for s, p in zip(samples, positions, strict=True)])
    step = chunk_positions(head.weight.shape[0], budget, copies=method.head_copies)
    # One fused log_softmax over a cache-sized chunk, then the selection from the log-probs:
    # 2.5x cheaper than a separate logsumexp at V = 4,096, for one more [chunk, V] copy.
    tokens = ids[rows, cols + 1] if token_column else None
    parts = []
    for a in range(0, max(len(at), 1), step):  # one empty chunk keeps the shapes
        logp = torch.log_softmax(_scaled(head(at[a : a + step]), temperature, limit), dim=-1)
        part = method.select(logp, None if u is None else u[a : a + step])
        if tokens is not None:
            part = with_token_column(part, logp, tokens[a : a + step])
        parts.append(part)
    return split_targets(concat(parts), positions)


def _scaled(logits: torch.Tensor, temperature: float, limit: int | None = None) -> torch.Tensor:
    logits = logits.float()
    if limit is not None and limit < logits.shape[-1]:
        logits[:, limit:] = float("-inf")
    return logits / temperature if temperature != 1.0 else logits


def split_targets(t: SparseTargets, positions: list[Any]) -> list[SparseTargets]:
    """The batch's targets [P, k], cut back into each sample's [P_j, k]."""
    out: list[SparseTargets] = []
    start = 0
    for p in positions:
        end = start + len(p)
        out.append(
            SparseTargets(
                t.ids[start:end],
                t.logprobs[start:end],
                None if t.counts is None else t.counts[start:end],
                None if t.proposal_offset is None else t.proposal_offset[start:end],
            )
        )
        start = end
    return out


class LocalTeacher:
    """A transformers model in this process: batches consecutive items of one kind.

    With ``group_by_length``, samples are scored in batches of similar length drawn from a
    window of ``GROUP_WINDOW`` batches (less padding, so fewer wasted FLOPs), and their targets
    still come out in item order: the cache is the same either way."""

    GROUP_WINDOW = 16

    def __init__(
        self,
        model: Any,
        tok: Any,
        *,
        temperature: float,
        batch_size: int,
        max_length: int,
        generate: GenerateSpec | None,
        group_by_length: bool = True,
        method: TargetMethod,
        token_column: bool = False,
    ) -> None:
        self.model, self.tok = model, tok
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        self.source = f"local {dtype}"  # the shard's stats say what precision made it
        self.temperature = temperature
        self.batch_size, self.max_length = batch_size, max_length
        self.gen = generate
        self.group_by_length = group_by_length
        self.method = method
        self.token_column = token_column
        """Scoring a student's own samples: each position's token gets a column too."""

    def run(
        self, items: Iterable[Item], padding: PaddingCount | None = None
    ) -> Iterator[list[Target]]:
        pending: list[Item] = []
        window = self.batch_size * (self.GROUP_WINDOW if self.group_by_length else 1)
        for item in items:
            if pending and type(pending[0]) is not type(item):
                yield from self._flush(pending, padding)
            pending.append(item)
            full = window if isinstance(item, Sample) else self.batch_size
            if len(pending) >= full:
                yield from self._flush(pending, padding)
        if pending:
            yield from self._flush(pending, padding)

    def _flush(self, pending: list[Item], padding: PaddingCount | None) -> Iterator[list[Target]]:
        batch, pending[:] = list(pending), []
        if isinstance(batch[0], Sample):
            samples = [s for s in batch if isinstance(s, Sample)]
            lengths = [len(s.input_ids) for s in samples]
            groups = batch_groups(lengths, self.batch_size, self.group_by_length)
            if padding is not None:
                padding.add(lengths, groups, self.batch_size)
            made: list[SparseTargets | None] = [None] * len(samples)
            for g in groups:
                group = [samples[i] for i in g]
                scored = score_batch(
                    self.model,
                    group,
                    self.method,
                    self.temperature,
                    limit=len(self.tok),
                    token_column=self.token_column,
                )
                for i, sparse in zip(g, scored, strict=True):
                    made[i] = sparse
            for s, t in zip(samples, made, strict=True):
                yield [Target(s, t)]
            return
        prompts = [p for p in batch if isinstance(p, Prompt)]
        assert self.gen is not None
        yield from generate_batch(
            self.model,
            self.tok,
            prompts,
            self.gen,
            self.method,
            self.temperature,
            self.max_length,
        )


class TeacherStats:
    """What a shard's targets are made of, summed while it is written."""

    def __init__(self) -> None:
        self.kinds = dict.fromkeys(KINDS, 0)
        self.fallback_positions = 0
        self.dropped_entries = 0
        self.obtained = 0
        self.positions = 0
        self.padding = PaddingCount()

    def add(self, t: Target) -> None:
        self.kinds[t.kind] += 1
        self.fallback_positions += t.alignment.fallback_positions
        self.dropped_entries += t.alignment.dropped_entries
        self.obtained += t.alignment.obtained
        self.positions += len(t.sample.target_positions())


def shard_items(
    dataset: Path,
    index: np.ndarray,
    record_ids: np.ndarray,
    tok: Any,
    max_length: int,
    stats: TokenizeStats,
    generating: bool,
) -> Iterator[Item]:
    """The shard's records in dataset order: samples to score, prompts to answer."""
    for rid, record in read_records(dataset, index, record_ids):
        if generating and is_prompt_only(record):
            ids = encode_prompt(record, tok)
            if len(ids) >= max_length:
                stats.dropped_no_target += 1
                continue
            yield Prompt(rid, ids)
            continue
        sample = tokenize_record(record, rid, tok, max_length, stats)
        if sample is not None:
            yield sample


def write_shard(
    *,
    teacher: Teacher | None,
    tok: Any,
    dataset: Path,
    index: np.ndarray,
    record_ids: np.ndarray,
    out: Path,
    meta: ShardMeta,
    max_length: int,
    method: TargetMethod | None = None,
    generating: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
    progress_every: int = 4,
) -> tuple[dict[str, int], TokenizeStats, TeacherStats]:
    """Tokenize the shard's records, have ``teacher`` make their targets (none when it is
    None: data_parallel), and stream them to ``out`` in record order; ``method``: what
    ``meta`` says made them (it names the extra columns to store)."""
    stats = TokenizeStats()
    items = shard_items(dataset, index, record_ids, tok, max_length, stats, generating)
    counts, tstats = write_items(
        teacher=teacher,
        items=items,
        out=out,
        meta=meta,
        method=method,
        stats=stats,
        on_progress=on_progress,
        progress_every=progress_every,
    )
    return counts, stats, tstats


def write_items(
    *,
    teacher: Teacher | None,
    items: Iterable[Item],
    out: Path,
    meta: ShardMeta,
    method: TargetMethod | None = None,
    stats: TokenizeStats | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    progress_every: int = 4,
) -> tuple[dict[str, int], TeacherStats]:
    """Have ``teacher`` make the targets of ``items`` (none when it is None) and stream them
    to ``out`` in order: a dataset's records (``write_shard``) or a student's own samples
    (on-policy scoring). ``stats`` counts what the teacher wrote as responses."""
    stats = stats or TokenizeStats()
    tstats = TeacherStats()
    with CacheWriter(out, meta) as writer:
        made = (
            teacher.run(items, tstats.padding)
            if teacher is not None
            else ([Target(s, None)] for s in items if isinstance(s, Sample))
        )
        for n, targets in enumerate(made, 1):
            for t in targets:
                if teacher is not None and t.kind != "scored":
                    stats.samples += 1
                    stats.tokens += len(t.sample.input_ids)
                writer.add(
                    t.sample.record_id,
                    np.asarray(t.sample.input_ids),
                    np.asarray(t.sample.target_positions()),
                    t.targets.ids if t.targets else None,
                    t.targets.logprobs if t.targets else None,
                    columns=method.stored(t.targets) if method and t.targets else None,
                    text=t.text,
                    kind=KINDS.index(t.kind),
                )
                tstats.add(t)
            if on_progress and n % progress_every == 0:
                on_progress(writer.counts["samples"], writer.counts["tokens"])
        if on_progress:
            on_progress(writer.counts["samples"], writer.counts["tokens"])
        counts = writer.counts
    return counts, tstats
