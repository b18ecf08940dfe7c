"""Which device each pool child of a worker computes on (``distillq worker --device``).

Child i of a ``-c N`` worker on a node with GPUs gets GPU ``i mod G`` of the GPUs it may use
(``CUDA_VISIBLE_DEVICES`` if the node's operator set it, else all that ``nvidia-smi`` lists),
through its own ``CUDA_VISIBLE_DEVICES``: inside the child that GPU is ``cuda``. It is set in
the child right after the fork, before anything touches CUDA. ``DISTILLQ_DEVICE`` tells
``core.models.device`` what was chosen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from distillq.errors import DistillqError

DeviceMode = Literal["auto", "cpu", "cuda"]
MODES: tuple[DeviceMode, ...] = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Assignment:
    device: Literal["cpu", "cuda"]
    env: dict[str, str]
    """What the child sets in its environment before it imports anything that uses CUDA."""


def usable_gpus(visible: str | None, gpu_count: int) -> list[str]:
    """The GPU ids a node's workers may use: the operator's ``CUDA_VISIBLE_DEVICES`` when set."""
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip()]
    return [str(i) for i in range(gpu_count)]


def check(mode: str, gpus: list[str]) -> None:
    """Refuse, in one line, a ``--device`` this node cannot honour (at worker start)."""
    if mode not in MODES:
        raise DistillqError(f"--device {mode!r} is not one of {', '.join(MODES)}")
    if mode == "cuda" and not gpus:
        raise DistillqError(
            "--device cuda, but this node has no usable GPU (nvidia-smi lists none, or "
            "CUDA_VISIBLE_DEVICES is empty): use --device cpu, or auto"
        )


def assign(mode: str, gpus: list[str], child_index: int) -> Assignment:
    """The device of pool child ``child_index`` (0-based) of a worker."""
    check(mode, gpus)
    if mode == "cpu" or not gpus:
        return Assignment("cpu", {"CUDA_VISIBLE_DEVICES": "", "DISTILLQ_DEVICE": "cpu"})
    gpu = gpus[child_index % len(gpus)]
    return Assignment("cuda", {"CUDA_VISIBLE_DEVICES": gpu, "DISTILLQ_DEVICE": "cuda"})
