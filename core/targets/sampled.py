"""Sampled teacher targets: N tokens drawn per position, kept as unique ids with counts.

Random-Sampling KD (Anshumann et al., "Sparse Logit Sampling", ACL 2025): instead of the
k most likely tokens, which give a biased picture of the teacher (its tail lumped or lost),
draw N tokens from the teacher's distribution p. ``count(x) / N`` is then an unbiased
estimate of p(x), so a loss that is linear in p (CE against the teacher, forward KL) has the
dense loss and the dense gradient as its expectation (``core/maths/losses.py``: the estimators).

Draws may come from a proposal q ∝ p^r (a proposal temperature t, r = τ / t) to spread them
over more tokens; each then carries the importance weight p(x) / q(x), and the cache keeps
the per-position offset c with log q = r·log p + c, so a reader can rebuild the weights.

Determinism: each sample's uniforms come from its own CPU generator seeded by
``draw_seed(seed, record_id, copy)``, and the token is found by inverse CDF (float64
cumulative sums), so a record draws the same tokens whatever its batch, shard or retry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from distillq.core.maths.losses import Estimator, estimated
from distillq.core.targets.records import SparseTargets, draw_seed
from distillq.storage.cache import Column

SAMPLER = "inverse-cdf/torch-cpu-philox"
"""Recorded in each sampled shard: how its uniforms were made and turned into tokens."""


@dataclass(frozen=True)
class Sampled:
    """``teacher.target_method: sampled``: N draws per position, kept as unique ids + counts."""

    name: ClassVar[str] = "sampled"
    words: ClassVar[str] = "tokens drawn from its distribution"
    samples: int
    seed: int
    temperature: float
    """τ of the stored log-probs."""
    proposal_temperature: float
    """Temperature of the distribution the tokens are drawn from (τ: the teacher's own)."""
    head_copies: int = 5
    """The log-probs, their probabilities and float64 cumulative sums."""
    estimator: Estimator = estimated

    @property
    def width(self) -> int:
        """Unique ids of N draws fit in N columns."""
        return self.samples

    @property
    def ratio(self) -> float | None:
        """r in q ∝ p^r, or None when the draws come from p itself."""
        if self.proposal_temperature == self.temperature:
            return None
        return self.temperature / self.proposal_temperature

    def uniforms(self, rows: Sequence[tuple[int, int, int]]) -> torch.Tensor | None:
        return torch.cat(
            [uniforms(self, rid, n, copy) for rid, n, copy in rows]
            or [torch.zeros((0, self.samples), dtype=torch.float64)]
        )

    def select(self, logp: torch.Tensor, u: torch.Tensor | None) -> SparseTargets:
        assert u is not None
        return to_targets(*draw_rows(logp, u, self.ratio))

    def columns(self) -> tuple[Column, ...]:
        counts = Column("target_counts", "uint8", wide=True)
        if self.ratio is None:
            return (counts,)
        return counts, Column("proposal_offset", "float32", wide=False)

    def stored(self, t: SparseTargets) -> dict[str, np.ndarray]:
        if t.counts is None:
            raise ValueError("a sampled shard needs the counts of every sample's draws")
        out = {"target_counts": t.counts}
        if self.ratio is not None:
            if t.proposal_offset is None:
                raise ValueError("draws from a proposal need each position's proposal_offset")
            out["proposal_offset"] = t.proposal_offset
        return out

    def attrs(self) -> dict[str, int | float | str]:
        return {
            "samples": self.samples,
            "sample_seed": self.seed,
            "proposal_temperature": self.proposal_temperature,
            "sampler": SAMPLER,
        }

    def weights(self, rows: Callable[[str], np.ndarray], logprobs: np.ndarray) -> np.ndarray | None:
        offset = rows("proposal_offset") if self.ratio is not None else None
        return sample_weights(rows("target_counts"), self.samples, logprobs, offset, self.ratio)

    def describe(self) -> str:
        return self.describe_width(self.samples)

    @staticmethod
    def describe_width(width: int) -> str:
        return f"{width} draws per position, sampled"


def sample_weights(
    counts: np.ndarray,
    samples: int,
    logprobs: np.ndarray | None = None,
    offset: np.ndarray | None = None,
    ratio: float | None = None,
) -> np.ndarray:
    """[P, N] float32 estimates of p at each stored id: count / N, times p / q for a proposal.

    Σ_j w_j f(x_j) is then an unbiased estimate of Σ_x p(x) f(x) for any f."""
    w = counts.astype(np.float32) / samples
    if offset is not None and ratio is not None and logprobs is not None:
        lp = np.where(counts > 0, logprobs.astype(np.float32), 0.0)
        # log p − log q = (1 − r)·log p − offset
        w = w * np.exp((1.0 - ratio) * lp - offset[:, None])
    return w.astype(np.float32)


def uniforms(draw: Sampled, record_id: int, positions: int, copy: int = 0) -> torch.Tensor:
    """[positions, N] float64 uniforms in [0, 1) of one sample, from its own seeded stream."""
    g = torch.Generator().manual_seed(draw_seed(draw.seed, record_id, copy))
    return torch.rand(positions, draw.samples, generator=g, dtype=torch.float64)


def draw_rows(
    logp: torch.Tensor, u: torch.Tensor, ratio: float | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Draw from each row of ``logp`` ([P, V] teacher log-probs at τ) with uniforms ``u`` [P, N].

    Returns (ids, logprobs, counts, offset): [P, N] each, the unique drawn ids sorted by
    log-prob (descending, which the cache's delta coding packs best), empty slots last with
    count 0, id 0 and log-prob −inf; offset [P] (log q = r·log p + offset) or None.
    """
    offset = None
    if ratio is None:
        probs = logp.exp()
    else:
        logq = torch.log_softmax(logp * ratio, dim=-1)
        offset = (logq[:, 0] - ratio * logp[:, 0]).float()
        probs = logq.exp()
    cdf = torch.cumsum(probs, dim=-1, dtype=torch.float64)
    u = u.to(cdf.device)
    # Scaled by the row's total, so float rounding of Σp never sends a draw past the end.
    drawn = torch.searchsorted(cdf, u * cdf[:, -1:]).clamp_(max=logp.shape[-1] - 1)
    del cdf, probs
    ids, counts = unique_counts(drawn)
    got = counts > 0
    lps = torch.where(got, logp.gather(-1, ids), float("-inf"))
    order = torch.argsort(lps, dim=-1, descending=True, stable=True)
    return ids.gather(-1, order), lps.gather(-1, order), counts.gather(-1, order), offset


def unique_counts(drawn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise unique values of ``drawn`` [P, N] and their counts, packed left: [P, N] each
    (slots past a row's last unique value hold id 0, count 0)."""
    s, _ = torch.sort(drawn, dim=-1)
    first = torch.ones_like(s, dtype=torch.bool)
    first[:, 1:] = s[:, 1:] != s[:, :-1]
    slot = torch.cumsum(first.long(), dim=-1) - 1
    counts = torch.zeros_like(s).scatter_add_(-1, slot, torch.ones_like(s))
    ids = torch.zeros_like(s).scatter_(-1, slot, s)
    return ids, counts


def to_targets(
    ids: torch.Tensor, lps: torch.Tensor, counts: torch.Tensor, offset: torch.Tensor | None
) -> SparseTargets:
    return SparseTargets(
        ids.cpu().numpy(),
        lps.to(torch.float16).cpu().numpy(),
        counts.to(torch.uint8).cpu().numpy(),
        None if offset is None else offset.cpu().numpy().astype(np.float32),
    )
