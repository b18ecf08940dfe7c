"""The target-method protocol: what a teacher keeps per position, and how a student weighs it.

A method is chosen by name (``teacher.target_method``; ``core/targets/registry.py``) and is
the one place its kind of target is decided:

- the teacher hands it the log-probs at τ of a chunk of positions and gets the sparse
  targets to store (``select``), with the uniforms of its draws where it draws (``uniforms``);
- the cache stores what it returns as datasets of its own (``columns``/``stored``) and
  attributes (``attrs``), and rebuilds it from those attributes (``registry.from_attrs``);
- the student gets typed weights from what was stored (``weights``) and the estimator that
  turns targets into a divergence (``estimator``);
- the report asks it for its name and words (``describe``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol

import numpy as np
import torch

from distillq.core.maths.losses import Estimator
from distillq.core.targets.records import SparseTargets
from distillq.storage.cache import Column


class TargetMethod(Protocol):
    name: ClassVar[str]
    words: ClassVar[str]
    """What its targets are, for a sentence of the report."""

    @property
    def width(self) -> int:
        """Columns per position in the cache: k kept, or N draws."""
        ...

    @property
    def head_copies(self) -> int:
        """float32 [chunk, V] copies alive while it selects (sizes the teacher's head chunks)."""
        ...

    @property
    def estimator(self) -> Estimator: ...

    def uniforms(self, rows: Sequence[tuple[int, int, int]]) -> torch.Tensor | None:
        """Random numbers for (record id, positions, copy) rows, concatenated; None where the
        method draws nothing."""
        ...

    def select(self, logp: torch.Tensor, u: torch.Tensor | None) -> SparseTargets:
        """The targets of ``logp`` ([P, V] teacher log-probs at τ) with uniforms ``u``."""
        ...

    def columns(self) -> tuple[Column, ...]: ...

    def stored(self, t: SparseTargets) -> dict[str, np.ndarray]:
        """One sample's values of ``columns()``."""
        ...

    def attrs(self) -> dict[str, int | float | str]: ...

    def weights(self, rows: Callable[[str], np.ndarray], logprobs: np.ndarray) -> np.ndarray | None:
        """[P, width] float32 estimates of p at each stored id, from the stored columns
        (``rows(name)``) and log-probs; None where the estimator needs none."""
        ...

    def describe(self) -> str:
        """The targets in a few words for the report (``top-64``)."""
        ...


def shard_fields(method: TargetMethod | None) -> dict[str, Any]:
    """``ShardMeta``'s fields that say which method made a shard's targets (none: no teacher)."""
    if method is None:
        return {"width": 0}
    return {
        "width": method.width,
        "method": method.name,
        "method_attrs": method.attrs(),
        "columns": method.columns(),
    }


def concat(parts: Sequence[SparseTargets]) -> SparseTargets:
    """Chunks of positions' targets as one."""

    def cat(name: str) -> Any:
        got = [getattr(p, name) for p in parts]
        return None if any(g is None for g in got) else np.concatenate(got)

    return SparseTargets(cat("ids"), cat("logprobs"), cat("counts"), cat("proposal_offset"))
