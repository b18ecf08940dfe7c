"""A cache shard read through its target method: padded batches with typed targets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distillq.core.maths.batching import Padded, pad
from distillq.core.maths.losses import Estimator
from distillq.core.targets import registry
from distillq.core.targets.method import TargetMethod
from distillq.storage.cache import CacheReader


@dataclass(frozen=True)
class Batch:
    """Samples of a shard, padded; targets for the positions that carry them."""

    padded: Padded
    target_ids: np.ndarray | None  # [P, k] int64
    target_logprobs: np.ndarray | None  # [P, k] float32
    target_weights: np.ndarray | None = None
    """[P, k] float32 estimates of p at each id (0: empty slot) where the method weighs its
    targets (sampled); None otherwise (top-k: the loss buckets the tail)."""
    estimator: Estimator | None = None
    """How the method's targets become a divergence; None without targets (CE only)."""


class Shard(CacheReader):
    """A shard file with the method that made its targets (``method``)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.method: TargetMethod | None = registry.from_attrs(self.attrs, path) if self.k else None

    def __enter__(self) -> Shard:
        return self

    def batch(self, first: int, last: int) -> Batch:
        """Contiguous samples [first, last) as one padded batch with their targets."""
        return self.batch_of(np.arange(first, last))

    def batch_of(self, indices: np.ndarray) -> Batch:
        """Samples ``indices`` (any order; batched in ascending order) as one padded batch."""
        idx = np.sort(np.asarray(indices))
        padded = pad(
            [self.sample_ids(int(j)) for j in idx], [self.positions_of(int(j)) for j in idx]
        )
        m = self.method
        if m is None:
            return Batch(padded, None, None)
        spans = self.spans(idx)
        lp16 = self.logprobs(spans)
        weights = m.weights(lambda name: self.rows(name, spans), lp16)
        ids = self.rows("target_ids", spans).astype(np.int64)
        return Batch(padded, ids, lp16.astype(np.float32), weights, m.estimator)
