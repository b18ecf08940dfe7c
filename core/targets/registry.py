"""Target methods by name: the one place a spec, a shard or a report finds its method.

The method modules import torch; they are imported where a method is built, not here: a
spec is checked by `status` and `enqueue`, which must not pay a second for torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from distillq.errors import CacheError, SpecError

if TYPE_CHECKING:
    from distillq.core.targets.method import TargetMethod

TOPK, SAMPLED = "topk", "sampled"
NAMES = (TOPK, SAMPLED)
DEFAULT_SAMPLES = 12
MAX_SAMPLES = 255
"""Draws per position are counted in one byte in the cache."""


class Options(Protocol):
    """What a teacher's spec says about its targets (``core/job/spec.py``: TeacherSpec)."""

    @property
    def target_method(self) -> str: ...
    @property
    def top_k(self) -> int: ...
    @property
    def samples(self) -> int | None: ...
    @property
    def proposal_temperature(self) -> float | None: ...
    @property
    def seed(self) -> int: ...
    @property
    def temperature(self) -> float: ...
    @property
    def is_endpoint(self) -> bool: ...


def check(o: Options) -> None:
    """Refuse, in one line naming the key, options the chosen method cannot take."""
    if o.target_method == TOPK:
        for key in ("samples", "proposal_temperature"):
            if getattr(o, key) is not None:
                raise SpecError(
                    f"teacher.{key} applies to target_method: {SAMPLED}: add "
                    f"teacher.target_method: {SAMPLED}, or remove teacher.{key}"
                )
        return
    if o.is_endpoint:
        raise SpecError(
            "teacher.target_method: sampled draws tokens from the teacher's whole "
            "distribution, and an endpoint returns only its top-k log-probs (no unbiased "
            "draw can be made from them): use target_method: topk with an endpoint, or a "
            "local teacher model"
        )
    n = width(o)
    if not 1 <= n <= MAX_SAMPLES:
        raise SpecError(
            f"teacher.samples={n} must lie in [1, {MAX_SAMPLES}] (counts take one byte); "
            "12 matches dense KD in the quality bench"
        )
    if o.proposal_temperature is not None and o.proposal_temperature <= 0:
        raise SpecError(
            f"teacher.proposal_temperature={o.proposal_temperature} must be positive; "
            "set it above 0"
        )


def check_vocabulary(o: Options, vocab: int) -> None:
    """Refuse top-k wider than the teacher's vocabulary (N draws may repeat tokens)."""
    if o.target_method == TOPK and o.top_k > vocab:
        raise SpecError(
            f"teacher.top_k={o.top_k} exceeds the teacher's vocabulary of {vocab}; lower it"
        )


def width(o: Options) -> int:
    """Columns of the cache's target datasets: k, or N draws (their unique ids fit in N)."""
    if o.target_method == SAMPLED:
        return o.samples if o.samples is not None else DEFAULT_SAMPLES
    return o.top_k


def build(o: Options) -> TargetMethod:
    """The method a (checked) teacher spec asks for."""
    from distillq.core.targets.sampled import Sampled
    from distillq.core.targets.topk import TopK

    if o.target_method == SAMPLED:
        return Sampled(
            samples=width(o),
            seed=o.seed,
            temperature=o.temperature,
            proposal_temperature=o.proposal_temperature or o.temperature,
        )
    return TopK(o.top_k)


def from_attrs(attrs: Mapping[str, Any], path: object = "") -> TargetMethod:
    """The method a shard's attributes name (formats 1 and 2 hold top-k targets only)."""
    from distillq.core.targets.sampled import Sampled
    from distillq.core.targets.topk import TopK

    name = str(attrs.get("target_method", TOPK))
    if name == TOPK:
        return TopK(int(attrs["k"]))
    if name == SAMPLED:
        return Sampled(
            samples=int(attrs["samples"]),
            seed=int(attrs["sample_seed"]),
            temperature=float(attrs["temperature"]),
            proposal_temperature=float(attrs["proposal_temperature"]),
        )
    raise CacheError(
        f"teacher cache {path} holds {name!r} targets, which this version cannot read; "
        f"upgrade distillq or regenerate the cache (methods: {', '.join(NAMES)})"
    )


def describe(name: str, width: int) -> str:
    """A method's targets in a few words from its name and width (what records keep)."""
    return _classes()[name].describe_width(width)


def plain(name: str) -> str:
    """What a method's targets are, for a sentence of the report."""
    return _classes()[name].words


def _classes() -> dict[str, Any]:
    from distillq.core.targets.sampled import Sampled
    from distillq.core.targets.topk import TopK

    return {TOPK: TopK, SAMPLED: Sampled}
