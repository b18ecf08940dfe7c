"""The student writes: continuations of a round's prompts by the track's current version, the
samples of on-policy distillation (docs/DESIGN.md §6c).

A prompt is the part of a cached sample before its first target: the prompt of a
prompt/response record, the turns before the first assistant reply of a chat; plain text
(every token a target) gives its first ``PROMPT_TOKENS`` (the held-out eval cuts the same). Each prompt draws from a seed made of
``on_policy.seed``, its record and the round, so a redelivered task writes the same text
whatever else the task holds.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from distillq.core.job.data import Prompt, Sample
from distillq.core.job.spec import OnPolicySpec
from distillq.core.targets.records import draw_seed

PROMPT_TOKENS = 48
"""A text record (no prompt of its own) is cut here into a prompt and the rest."""


def prompt_of(ids: Sequence[int] | np.ndarray, positions: Sequence[int] | np.ndarray) -> list[int]:
    """The prompt of a sample: its tokens before the first target; a text record, where every
    token is a target, its first ``PROMPT_TOKENS`` (at most half of it)."""
    first = int(positions[0]) + 1 if len(positions) else len(ids)
    if first <= 1:
        first = max(1, min(PROMPT_TOKENS, len(ids) // 2))
    return [int(t) for t in ids[:first]]


def chosen(spec: OnPolicySpec, round_: int, record_ids: np.ndarray) -> np.ndarray:
    """Which records of a round the student samples itself (bool per record): each with
    probability ``fraction``, drawn per (seed, round, record) so every task agrees."""
    if spec.fraction >= 1.0:
        return np.ones(len(record_ids), dtype=bool)
    u = [np.random.default_rng([spec.seed, round_, int(r)]).random() for r in record_ids]
    return np.asarray(u, dtype=np.float64) < spec.fraction


@torch.no_grad()
def continuations(
    model: Any,
    tok: Any,
    prompts: Sequence[Prompt],
    spec: OnPolicySpec,
    round_: int,
    max_length: int,
) -> Iterator[tuple[Sample, str]]:
    """``samples_per_prompt`` continuations of each prompt as training samples (the
    continuation is the target, ending in EOS where the student stopped), with their text."""
    dev = next(model.parameters()).device
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else (eos if eos is not None else 0)
    was_training = model.training
    model.eval()
    try:
        for p in prompts:
            budget = min(spec.max_new_tokens, max_length - len(p.input_ids))
            if budget < 1:
                continue
            n = spec.samples_per_prompt
            ids = torch.tensor([list(p.input_ids)] * n, dtype=torch.long, device=dev)
            torch.manual_seed(draw_seed(spec.seed, p.record_id, round_))
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=budget,
                do_sample=spec.temperature > 0,
                temperature=spec.temperature if spec.temperature > 0 else None,
                top_p=spec.top_p if spec.temperature > 0 else None,
                top_k=None,
                pad_token_id=pad,
                eos_token_id=eos,
            )
            for row in out[:, len(p.input_ids) :].cpu().tolist():
                stopped = eos is not None and eos in row
                new = row[: row.index(eos) + 1] if stopped else row
                text = str(tok.decode(new[:-1] if stopped else new, skip_special_tokens=True))
                mask = [False] * len(p.input_ids) + [True] * len(new)
                yield Sample(p.record_id, list(p.input_ids) + new, mask), text
    finally:
        model.train(was_training)
