"""Which Hugging Face architectures the GGUF writer knows, and how each maps onto llama.cpp.

One entry per architecture, chosen by the checkpoint's ``architectures[0]``. Each says the
llama.cpp architecture name and whether q/k weights need reordering for llama.cpp's rope:

- Llama: transformers rotates the two *halves* of each head (rotate_half, "NEOX" style),
  llama.cpp's LLAMA rope rotates *adjacent pairs*. Reordering the rows of q and k so each
  (i, i + d/2) pair becomes (2i, 2i + 1) makes the two the same function; llama.cpp's own
  converter does the same (``LlamaModel.permute``).
- Qwen2: llama.cpp runs it with NEOX rope, the same layout as transformers: no reordering.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from distillq.errors import ExportError


@dataclass(frozen=True)
class Arch:
    gguf_name: str
    """llama.cpp's architecture name (``general.architecture``)."""
    permute_qk: bool
    """Reorder q/k rows from half-rotation to pair-rotation (see the module docstring)."""


ARCHES: dict[str, Arch] = {
    "LlamaForCausalLM": Arch("llama", permute_qk=True),
    "Qwen2ForCausalLM": Arch("qwen2", permute_qk=False),
}


def arch_of(config: dict[str, Any]) -> Arch:
    """The entry for ``config.json``'s architecture; ExportError naming what is supported."""
    names = config.get("architectures") or [config.get("model_type", "unknown")]
    arch = ARCHES.get(names[0])
    if arch is None:
        raise ExportError(
            f"GGUF export does not support architecture {names[0]}: supported are "
            f"{', '.join(sorted(ARCHES))}; the safetensors model is still in final/merged"
        )
    return arch


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder the rows of a q or k projection ``[n_head · d, ...]`` from (i, i + d/2) pairs
    to (2i, 2i + 1) pairs, within each head."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


@dataclass(frozen=True)
class HParams:
    """The shape of a decoder, read from ``config.json`` (transformers 4.x and 5.x spellings)."""

    vocab_size: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    context: int
    rms_eps: float
    rope_theta: float
    tied: bool

    @staticmethod
    def from_config(c: dict[str, Any]) -> HParams:
        rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
        kind = rope.get("rope_type") or rope.get("type") or "default"
        if kind != "default":
            raise ExportError(
                f"GGUF export does not support rope_type {kind!r} yet: only the default rope "
                "is written; the safetensors model is still in final/merged"
            )
        heads = int(c["num_attention_heads"])
        return HParams(
            vocab_size=int(c["vocab_size"]),
            hidden=int(c["hidden_size"]),
            layers=int(c["num_hidden_layers"]),
            heads=heads,
            kv_heads=int(c.get("num_key_value_heads") or heads),
            head_dim=int(c.get("head_dim") or c["hidden_size"] // heads),
            intermediate=int(c["intermediate_size"]),
            context=int(c.get("max_position_embeddings", 2048)),
            rms_eps=float(c.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope.get("rope_theta") or c.get("rope_theta", 10000.0)),
            tied=bool(c.get("tie_word_embeddings", False)),
        )
