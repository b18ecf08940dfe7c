"""Top-k targets: the k most likely tokens at each position, the rest as one tail bucket.

Deterministic and biased (the tail is lumped); the loss takes the divergence of the k + 1
bucket distributions (``core/maths/losses.py``). The cache stores ids and log-probs only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from distillq.core.maths.losses import Estimator, bucketed
from distillq.core.targets.records import SparseTargets
from distillq.storage.cache import Column


@dataclass(frozen=True)
class TopK:
    name: ClassVar[str] = "topk"
    words: ClassVar[str] = "top-k"
    width: int
    head_copies: int = 3
    """The logits, their log-softmax and the top-k's temporaries."""
    estimator: Estimator = bucketed

    def uniforms(self, rows: Sequence[tuple[int, int, int]]) -> torch.Tensor | None:
        return None

    def select(self, logp: torch.Tensor, u: torch.Tensor | None) -> SparseTargets:
        # Sorted descending: the cache's delta coding of log-probs compresses best that way.
        # (An unsorted top-k plus a sort of the k winners measured no cheaper on CPU.)
        top = torch.topk(logp, k=self.width, dim=-1)
        return SparseTargets(top.indices.cpu().numpy(), top.values.to(torch.float16).cpu().numpy())

    def columns(self) -> tuple[Column, ...]:
        return ()

    def stored(self, t: SparseTargets) -> dict[str, np.ndarray]:
        return {}

    def attrs(self) -> dict[str, int | float | str]:
        return {}

    def weights(self, rows: Callable[[str], np.ndarray], logprobs: np.ndarray) -> np.ndarray | None:
        return None

    def describe(self) -> str:
        return self.describe_width(self.width)

    @staticmethod
    def describe_width(width: int) -> str:
        return f"top-{width}"


def with_token_column(t: SparseTargets, logp: torch.Tensor, tokens: torch.Tensor) -> SparseTargets:
    """``t`` [P, k] and one column more: each position's own next token and its log-prob, so
    the teacher's log-prob of the token a student wrote is known wherever it fell (on-policy
    scoring). Where the top-k already lists it, the extra slot holds −inf (not listed: each id
    is counted once by the bucketed loss)."""
    own = logp.gather(-1, tokens[:, None].to(logp.device))[:, 0].cpu().float().numpy()
    return token_column(t, tokens.cpu().numpy(), own)


def token_column(t: SparseTargets, tokens: np.ndarray, logprobs: np.ndarray) -> SparseTargets:
    """``t`` with the last column on-policy targets end with: ``tokens`` [P] and their
    ``logprobs`` [P] (−inf: unknown, as from a server), −inf where the top-k lists the token.
    ``core/maths/policy_loss.sampled_token`` reads the token there."""
    listed = (t.ids == tokens[:, None]).any(-1)
    lp = np.where(listed, -np.inf, logprobs).astype(t.logprobs.dtype)
    return SparseTargets(
        np.concatenate([t.ids, tokens[:, None].astype(t.ids.dtype)], axis=1),
        np.concatenate([t.logprobs, lp[:, None]], axis=1),
    )


def token_logprobs(
    ids: np.ndarray, logprobs: np.ndarray, tokens: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """([P] the log-prob listed for each position's own token, [P] whether it was listed) from
    targets [P, k]: what the teacher thinks of the token a student wrote."""
    listed = ids == np.asarray(tokens)[:, None]
    lps = np.where(listed, logprobs.astype(np.float64), -np.inf).max(-1, initial=-np.inf)
    return lps, listed.any(-1)
