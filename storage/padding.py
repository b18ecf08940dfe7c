"""One padder: token sequences and their target positions → a right-padded batch (numpy).

The cache reader (training), the teacher (scoring) and the held-out eval all batch the same
way, so a sample is seen with the same positions everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Padded:
    input_ids: np.ndarray  # [B, L] int64, padded with 0
    attention_mask: np.ndarray  # [B, L] int64
    rows: np.ndarray  # [P] batch row of each target position
    cols: np.ndarray  # [P] column (position within the sample) of each target position
    labels: np.ndarray  # [P] the next token at each target position (hard label)


def pad(sequences: Sequence[np.ndarray], positions: Sequence[np.ndarray]) -> Padded:
    """Right-pad ``sequences`` ([L_j] each); ``positions[j]``: sample j's target positions."""
    length = max(len(s) for s in sequences)
    ids = np.zeros((len(sequences), length), dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    rows = np.concatenate(
        [np.full(len(p), i, dtype=np.int64) for i, p in enumerate(positions)]
        or [np.zeros(0, dtype=np.int64)]
    )
    cols = np.concatenate(
        [np.asarray(p, dtype=np.int64) for p in positions] or [np.zeros(0, dtype=np.int64)]
    )
    return Padded(ids, mask, rows, cols, ids[rows, cols + 1])
