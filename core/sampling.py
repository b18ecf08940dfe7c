"""Sampled teacher targets: N tokens drawn per position, kept as unique ids with counts.

Random-Sampling KD (Anshumann et al., "Sparse Logit Sampling", ACL 2025): instead of the
k most likely tokens, which give a biased picture of the teacher (its tail lumped or lost),
draw N tokens from the teacher's distribution p. ``count(x) / N`` is then an unbiased
estimate of p(x), so a loss that is linear in p (CE against the teacher, forward KL) has the
dense loss and the dense gradient as its expectation (``core/losses.py`` for the estimators).

Draws may come from a proposal q ∝ p^r (a proposal temperature t, r = τ / t) to spread them
over more tokens; each then carries the importance weight p(x) / q(x), and the cache keeps
the per-position offset c with log q = r·log p + c, so a reader can rebuild the weights.

Determinism: each sample's uniforms come from its own CPU generator seeded by
``draw_seed(seed, record_id, copy)``, and the token is found by inverse CDF (float64
cumulative sums), so a record draws the same tokens whatever its batch, shard or retry.
"""

from __future__ import annotations

import numpy as np
import torch

from core.targets import SparseTargets, draw_seed
from storage.cache import Draw


def uniforms(draw: Draw, record_id: int, positions: int, copy: int = 0) -> torch.Tensor:
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
