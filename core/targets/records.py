"""Sparse teacher targets at a sample's positions, and what a served answer could not give."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Alignment:
    """Counts of what could not be taken from a server's answer, per sample."""

    fallback_positions: int = 0
    """Target positions with no teacher distribution: trained with CE on the token itself."""
    dropped_entries: int = 0
    """Top-k entries whose token text maps to no single id (left to the tail)."""
    obtained: int = 0
    """Entries stored, over all target positions (k obtained = obtained / positions)."""


@dataclass
class SparseTargets:
    ids: np.ndarray  # [P_j, k] int64
    logprobs: np.ndarray  # [P_j, k] float16
    counts: np.ndarray | None = None
    """[P_j, k] uint8 with sampled targets: how often each id was drawn (0: an empty slot)."""
    proposal_offset: np.ndarray | None = None
    """[P_j] float32 where the draws came from a proposal q ≠ p: log q = r·log p + offset."""


def draw_seed(base: int, record_id: int, copy: int) -> int:
    """The seed of one response: the same record always draws the same text (retries too)."""
    return (base * 1_000_003 + record_id * 7_919 + copy) % (2**31 - 1)
