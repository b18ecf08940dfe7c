"""The student's LM head and loss over its target positions in chunks: [B, L, V] never exists.

The model runs with its output layer swapped for an identity, so it returns hidden states
([B, L, D]); every PEFT method still applies (prompt tuning's virtual tokens, prefix caches,
adapters inside the body). Then the head and the KD + CE loss run over chunks of target
positions, each under activation checkpointing: the forward keeps no [chunk, V] logits, and
the backward recomputes one chunk's logits at a time. Logit memory is O(chunk × V) instead
of O(B × L × V) for the model's own output plus O(P × V) for the target positions, at the
price of a second head matmul per chunk in the backward. Loss and gradients equal the
one-pass path (``tests/unit/test_head_loss.py``).

A model whose forward does more than the head after the body (Gemma 2's logit soft-capping)
keeps the one-pass path.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from distillq.core.maths.losses import Estimator, bucketed, kd_terms

LOGITS_BUDGET_BYTES = 256 << 20
"""Memory one chunk of [positions, V] float32 logits and their temporaries may take, for the
student's loss here and the teacher's top-k (``core/teacher.py``)."""


def chunk_rows(vocab: int, budget: int = LOGITS_BUDGET_BYTES, copies: int = 4) -> int:
    """Positions per chunk when ``copies`` float32 [chunk, V] tensors live at once (the
    student's: logits, their gradient and the loss's temporaries)."""
    return max(1, budget // (vocab * 4 * copies))


def _base(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def chunkable(model: Any) -> bool:
    cfg = getattr(_base(model), "config", None)
    return getattr(cfg, "final_logit_softcapping", None) is None and (
        _base(model).get_output_embeddings() is not None
    )


@contextmanager
def hidden_out(model: Any) -> Iterator[Any]:
    """The model returns hidden states as its "logits" inside; yields its real head."""
    base = _base(model)
    head = base.get_output_embeddings()
    base.set_output_embeddings(torch.nn.Identity())
    try:
        yield head
    finally:
        base.set_output_embeddings(head)


def target_hidden(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
) -> tuple[torch.Tensor, Any]:
    """Hidden states [P, D] at (row, col) target positions, and the head that maps them."""
    with hidden_out(model) as head:
        out = model(input_ids=input_ids, attention_mask=attention_mask)
    b, length = input_ids.shape
    hidden = out.logits[:, -length:]  # prompt tuning prepends virtual tokens
    flat = hidden.reshape(b * length, -1).index_select(0, rows * length + cols)
    return flat, head


def chunked_loss(
    hidden: torch.Tensor,
    head: Any,
    labels: torch.Tensor,
    target_ids: torch.Tensor | None,
    teacher_logprobs: torch.Tensor | None,
    *,
    alpha: float,
    temperature: float,
    kind: str = "forward_kl",
    beta: float = 0.5,
    budget: int = LOGITS_BUDGET_BYTES,
    weights: torch.Tensor | None = None,
    estimator: Estimator = bucketed,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``kd_loss`` of ``head(hidden)``, computed ``chunk_rows`` positions at a time.

    Each chunk's mean is weighted by its share of positions, so the sum is the mean over all
    positions, the same loss the one-pass path takes."""
    p = hidden.shape[0]
    step = chunk_rows(head.weight.shape[0], budget)
    total = hidden.new_zeros((), dtype=torch.float32)
    ce = kd = 0.0
    grad = torch.is_grad_enabled()
    for a in range(0, p, step):
        e = min(p, a + step)

        def part(h: torch.Tensor, a: int = a, e: int = e) -> torch.Tensor:
            terms = kd_terms(
                head(h),
                labels[a:e],
                None if target_ids is None else target_ids[a:e],
                None if teacher_logprobs is None else teacher_logprobs[a:e],
                alpha=alpha,
                temperature=temperature,
                kind=kind,
                beta=beta,
                weights=None if weights is None else weights[a:e],
                estimator=estimator,
            )
            return torch.stack(terms)

        h = hidden[a:e]
        # One chunk holds every position: nothing to save by recomputing it.
        out = checkpoint(part, h, use_reentrant=False) if grad and step < p else part(h)
        w = (e - a) / p
        total = total + w * out[0]
        ce += w * float(out[1].detach())
        kd += w * float(out[2].detach())
    return total, {"ce": ce, "kd": kd}
