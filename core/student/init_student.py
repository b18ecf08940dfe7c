"""A student made from the teacher: its architecture, smaller, with its tokenizer.

``distillq init-student TEACHER --out DIR [--layers N] [--hidden H] [--from-teacher-layers]``.
A student must share the teacher's tokenizer; this is the way to get one without writing a
script. The shape keeps the teacher's head size (so narrower means fewer heads, with the
teacher's ratio of query to key/value heads) and scales the MLP with the width. Where heads
and width are decoupled (heads x head size != width: Gemma 3, Qwen3), any width up to the
teacher's is accepted and the heads scale with it.

``--from-teacher-layers`` initialises from the teacher, as DistilBERT did: student layer j
takes teacher layer ``round(j · L_t / N)`` (every other layer at half depth), embeddings,
final norm and head are copied, and every tensor is cut to the student's shape (its leading
rows, columns and heads) where the width shrinks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distillq.errors import ModelError


@dataclass(frozen=True)
class StudentShape:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    head_dim: int


def shape_for(cfg: Any, layers: int | None, hidden: int | None) -> StudentShape:
    """The student's shape from the teacher's config. Raises ModelError naming the fix."""
    t_layers, t_hidden = int(cfg.num_hidden_layers), int(cfg.hidden_size)
    t_heads = int(cfg.num_attention_heads)
    t_kv = int(getattr(cfg, "num_key_value_heads", None) or t_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or t_hidden // t_heads)
    n = layers or max(1, t_layers // 2)
    h = hidden or t_hidden
    if not 1 <= n <= t_layers:
        raise ModelError(f"--layers {n}: choose 1 to {t_layers} (the teacher's depth)")
    group = max(1, t_heads // t_kv)
    if t_heads * head_dim != t_hidden:
        # Decoupled heads (Gemma 3, Qwen3: heads x head size != width): the width need not be
        # a multiple of the head size; the heads shrink with the width, whole GQA groups.
        if not 1 <= h <= t_hidden:
            raise ModelError(f"--hidden {h}: choose 1 to {t_hidden} (the teacher's width)")
        heads = max(group, round(t_heads * h / t_hidden / group) * group)
    else:
        if h > t_hidden or h % head_dim:
            raise ModelError(
                f"--hidden {h}: choose a multiple of the teacher's head size {head_dim}, at "
                f"most its width {t_hidden}"
            )
        heads = h // head_dim
    kv = max(1, heads // group)
    inter = int(cfg.intermediate_size) * h // t_hidden
    return StudentShape(n, h, heads, kv, inter - inter % 8 or 8, head_dim)


def layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """The teacher layer each student layer starts from (evenly spread, first kept)."""
    return [round(j * teacher_layers / student_layers) for j in range(student_layers)]


def init_student(
    teacher: str,
    out: Path,
    layers: int | None,
    hidden: int | None,
    from_teacher: bool,
    seed: int = 0,
) -> tuple[Path, StudentShape]:
    """Write the student's weights and the teacher's tokenizer to ``out``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from distillq.core.job.models import load_causal_lm, load_tokenizer

    if out.exists() and any(out.iterdir()):
        raise ModelError(f"--out {out} is not empty; pass a new directory")
    tok = load_tokenizer(teacher, "teacher model")
    cfg = AutoConfig.from_pretrained(teacher)
    shape = shape_for(cfg, layers, hidden)
    small = AutoConfig.from_pretrained(teacher)
    small.num_hidden_layers = shape.layers
    small.hidden_size = shape.hidden
    small.num_attention_heads = shape.heads
    small.num_key_value_heads = shape.kv_heads
    small.intermediate_size = shape.intermediate
    if getattr(cfg, "head_dim", None):
        small.head_dim = shape.head_dim
    picked = layer_map(cfg.num_hidden_layers, shape.layers)
    if getattr(cfg, "layer_types", None):
        # Per-layer attention kinds (sliding or full: Gemma 3, Qwen3) follow the layers taken.
        small.layer_types = [cfg.layer_types[i] for i in picked]
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(small, dtype=torch.float32)
    if from_teacher:
        big = load_causal_lm(teacher, "teacher model")
        _copy_from(big, model, picked)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out, shape


def _copy_from(teacher: Any, student: Any, layers: list[int]) -> None:
    """Every student tensor from its teacher counterpart, cut to the student's shape."""
    import torch

    src = teacher.state_dict()
    with torch.no_grad():
        for name, p in student.state_dict().items():
            key = name
            parts = name.split(".")
            if "layers" in parts:
                i = parts.index("layers") + 1
                parts[i] = str(layers[int(parts[i])])
                key = ".".join(parts)
            t = src.get(key)
            if t is None:
                continue  # a buffer or a tensor the teacher does not have: keep the init
            p.copy_(t[tuple(slice(0, n) for n in p.shape)].to(p.dtype))
