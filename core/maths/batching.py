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


def batch_groups(
    lengths: Sequence[int] | np.ndarray, batch_size: int, by_length: bool
) -> list[np.ndarray]:
    """Indices of ``lengths`` cut into batches of ``batch_size``: consecutive ones, or (with
    ``by_length``) ordered by length first, so each batch holds samples of similar length and
    pads less. Ties keep index order, so the grouping is a pure function of the lengths: a
    resumed or redelivered task builds the same batches, and a seeded order over them stays
    reproducible."""
    order = np.argsort(np.asarray(lengths), kind="stable") if by_length else np.arange(len(lengths))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@dataclass
class PaddingCount:
    """Padding of the batches a stage ran, beside what consecutive batches would have padded."""

    tokens: int = 0
    cells: int = 0
    cells_ungrouped: int = 0

    def add(
        self, lengths: Sequence[int] | np.ndarray, groups: Sequence[np.ndarray], batch_size: int
    ) -> None:
        lens = np.asarray(lengths)
        self.tokens += int(lens.sum())
        self.cells += sum(len(g) * int(lens[g].max()) for g in groups if len(g))
        plain = batch_groups(lengths, batch_size, by_length=False)
        self.cells_ungrouped += sum(len(g) * int(lens[g].max()) for g in plain if len(g))

    def fractions(self) -> tuple[float | None, float | None]:
        """(padding of the batches run, padding had they been consecutive), or Nones."""
        if not self.cells:
            return None, None
        return (
            round(1 - self.tokens / self.cells, 4),
            round(1 - self.tokens / self.cells_ungrouped, 4),
        )
