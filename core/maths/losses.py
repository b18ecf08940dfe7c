"""KD losses on sparse teacher targets: top-k (bucketed, below) or sampled (unbiased).

The teacher cache keeps k log-probs per position. The missing tail is not dropped or
renormalised away: both distributions are coarse-grained onto k + 1 buckets — the teacher's
top-k tokens and one "everything else" bucket holding the remaining mass (1 − Σ p_topk for
the teacher, the student's own mass outside those k tokens for the student). Any divergence
is then taken between two proper distributions. This is the exact divergence of the
coarse-grained distributions, a lower bound on the full one (data processing inequality),
and equal to the dense loss when k = V.

A teacher log-prob of −inf marks a slot that holds no teacher entry (a server returned fewer
than k tokens, or none at a position): that token is not listed, so its mass stays in the
tail bucket of both distributions. A row whose only entry is the true token at log-prob 0 is
a one-hot teacher, for which the KD term equals CE on that token.

Sampled targets (``core/targets/sampled.py``) come with weights w_j, unbiased estimates of the
teacher's probability at each stored id: E[Σ_j w_j f(x_j)] = Σ_x p(x) f(x) for any f that
can be computed at x. Every divergence here is a sum over tokens of a function of p(x) and
s(x), plus terms in the student alone (computed exactly over the vocabulary), so each has an
unbiased estimator (:func:`sampled_divergence`), and so has its gradient, which is linear in
the same weights. No tail bucket is needed: nothing is lumped, so nothing is biased.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F


class Estimator(Protocol):
    """How a target method's stored targets become D(teacher, student) per row: [P].

    ``z``: [P, V] student logits at τ; ``log_z``: [P, 1] their logsumexp at τ, or None where
    the estimator computes it; ids, log-probs and weights: [P, k] as the cache gives them."""

    def __call__(
        self,
        kind: str,
        z: torch.Tensor,
        log_z: torch.Tensor | None,
        temperature: float,
        target_ids: torch.Tensor,
        teacher_logprobs: torch.Tensor,
        weights: torch.Tensor | None,
        beta: float,
    ) -> torch.Tensor: ...


def bucketed(
    kind: str,
    z: torch.Tensor,
    log_z: torch.Tensor | None,
    temperature: float,
    target_ids: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    weights: torch.Tensor | None,
    beta: float,
) -> torch.Tensor:
    """The divergence of the k + 1 bucket distributions (top-k targets; no weights)."""
    t, s = bucket_logprobs(z, target_ids, teacher_logprobs, temperature, log_z)
    return divergence(kind, t, s, beta)


def estimated(
    kind: str,
    z: torch.Tensor,
    log_z: torch.Tensor | None,
    temperature: float,
    target_ids: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    weights: torch.Tensor | None,
    beta: float,
) -> torch.Tensor:
    """The unbiased estimate of :func:`sampled_divergence` (sampled targets: ``weights``)."""
    if weights is None:
        raise ValueError("sampled targets need their weights")
    zt = z / temperature if temperature != 1.0 else z
    if log_z is None:
        log_z = torch.logsumexp(zt, dim=-1, keepdim=True)
    return sampled_divergence(kind, zt, log_z, target_ids, teacher_logprobs, weights, beta)


TAIL_FLOOR = 1e-8
UNLISTED = -1e4
"""Log-prob given to unlisted slots: exp() is exactly 0 in float32, and unlike −inf it keeps
logsumexp and the divergences' gradients finite."""


def bucket_logprobs(
    student_logits: torch.Tensor,
    target_ids: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    temperature: float,
    log_z: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher and student log-probs over the k + 1 buckets.

    Args:
        student_logits: [P, V] raw student logits at the target positions.
        target_ids: [P, k] teacher top-k token ids.
        teacher_logprobs: [P, k] teacher log-probs at τ, normalised over the full vocabulary.
        temperature: τ, the same the teacher cache was made with.
        log_z: [P, 1] logsumexp of ``student_logits / τ`` if the caller has it already.
    Returns:
        (teacher, student): each [P, k + 1]; column k is the tail bucket. Entries may be −inf.
    """
    z = student_logits.float()
    if temperature != 1.0:
        z = z / temperature
    if log_z is None:
        log_z = torch.logsumexp(z, dim=-1, keepdim=True)  # [P, 1]: the only pass over V
    s_top = z.gather(-1, target_ids) - log_z  # [P, k]
    t_top = teacher_logprobs.float()
    listed = torch.isfinite(t_top)
    if not bool(listed.all()):
        t_top = torch.where(listed, t_top, UNLISTED)
        s_top = torch.where(listed, s_top, UNLISTED)
    t_mass = torch.logsumexp(t_top, dim=-1, keepdim=True)
    if target_ids.shape[-1] >= z.shape[-1]:
        # Every token is listed: there is no tail; fp16 rounding error is renormalised away.
        t_top = t_top - t_mass
        t_tail = torch.full_like(t_mass, float("-inf"))
        s_tail = torch.full_like(t_mass, float("-inf"))
    else:
        # fp16 storage can make Σ p_topk exceed 1 by a hair: renormalise, and floor the tail
        # at TAIL_FLOOR so reverse KL / JSD stay finite where the student puts mass there.
        t_top = t_top - t_mass.clamp(min=0.0)
        t_tail = torch.log((-torch.expm1(t_mass.clamp(max=0.0))).clamp(min=TAIL_FLOOR))
        # Student tail from its top-k mass m: log(1 − m) = log(−expm1(log m)), exact for small
        # tails, on [P, k] instead of a second pass over the vocabulary. The clamp keeps the
        # gradient finite when the tail underflows (< 1e-7 of the mass).
        s_mass = torch.logsumexp(s_top, dim=-1, keepdim=True).clamp(max=-1e-7)
        s_tail = torch.log(-torch.expm1(s_mass))
    return torch.cat([t_top, t_tail], dim=-1), torch.cat([s_top, s_tail], dim=-1)


def kl(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) per row, for log-prob tensors [P, K]; 0 · log 0 counts as 0. Returns [P]."""
    p = p_log.exp()
    terms = p * (p_log - q_log)
    return torch.where(p > 0, terms, torch.zeros_like(terms)).sum(-1)


def divergence(
    kind: str, teacher: torch.Tensor, student: torch.Tensor, beta: float = 0.5
) -> torch.Tensor:
    """D(teacher, student) per row over bucketed log-probs [P, K]. Returns [P].

    ``forward_kl``: KL(t ‖ s) (mode-covering, the classic KD loss). ``reverse_kl``: KL(s ‖ t)
    (mode-seeking). ``jsd``: generalised JSD, β·KL(t ‖ m) + (1 − β)·KL(s ‖ m) with
    m = β·t + (1 − β)·s, as in GKD (Agarwal et al., 2024).
    """
    if kind == "forward_kl":
        return kl(teacher, student)
    if kind == "reverse_kl":
        return kl(student, teacher)
    if kind == "jsd":
        m = torch.logsumexp(
            torch.stack([teacher + math.log(beta), student + math.log(1 - beta)]), dim=0
        )
        return beta * kl(teacher, m) + (1 - beta) * kl(student, m)
    raise ValueError(f"unknown divergence {kind!r}: use forward_kl, reverse_kl or jsd")


def sampled_divergence(
    kind: str,
    z: torch.Tensor,
    log_z: torch.Tensor,
    target_ids: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    weights: torch.Tensor,
    beta: float = 0.5,
) -> torch.Tensor:
    """An unbiased estimate of D(teacher, student) per row from sampled targets. Returns [P].

    Args:
        z: [P, V] student logits at τ; log_z: [P, 1] their logsumexp.
        target_ids, teacher_logprobs: [P, N] drawn ids and the teacher's log p there.
        weights: [P, N] estimates of p at the ids (0 on empty slots).

    ``forward_kl``: Σ_j w_j (log p_j − log s_j), the paper's estimator; its gradient in z is
    (Σw)·s − w, whose expectation s − p is the dense gradient. ``reverse_kl``:
    Σ_x s log s (exact) − Σ_j w_j (s_j / p_j) log p_j. ``jsd``: β Σ_j w_j log p_j +
    (1 − β) Σ_x s log s (exact) − Σ_j w_j (m_j / p_j) log m_j with m = βp + (1 − β)s. The
    last two are importance-weighted by s / p: unbiased, with a variance that grows where
    the student puts mass the teacher almost never draws (docs/DESIGN.md §6b).
    """
    used = weights > 0
    lp = torch.where(used, teacher_logprobs.float(), 0.0)
    s = z.gather(-1, target_ids) - log_z  # [P, N]
    w = weights.float()
    if kind == "forward_kl":
        return (w * (lp - s)).sum(-1)
    log_s = z - log_z
    neg_entropy = (log_s.exp() * log_s).sum(-1)  # Σ_x s log s, over the whole vocabulary
    # w · s / p in log space: a token drawn from a hot proposal can have p far below s, and
    # exp(s − log p) alone would overflow where w (which carries p / q) brings it back down.
    log_w = torch.where(used, w.clamp_min(1e-30).log(), float("-inf"))
    if kind == "reverse_kl":
        return neg_entropy - (torch.exp(log_w + s - lp) * lp).sum(-1)
    if kind == "jsd":
        log_m = torch.logaddexp(lp + math.log(beta), s + math.log(1 - beta))
        cross = (torch.exp(log_w + log_m - lp) * log_m).sum(-1)
        return beta * (w * lp).sum(-1) + (1 - beta) * neg_entropy - cross
    raise ValueError(f"unknown divergence {kind!r}: use forward_kl, reverse_kl or jsd")


def kd_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    target_ids: torch.Tensor | None,
    teacher_logprobs: torch.Tensor | None,
    *,
    alpha: float,
    temperature: float,
    kind: str = "forward_kl",
    beta: float = 0.5,
    weights: torch.Tensor | None = None,
    estimator: Estimator = bucketed,
) -> tuple[torch.Tensor, dict[str, float]]:
    """α·CE(labels) + (1 − α)·τ²·D(teacher ‖ student), averaged over target positions.

    Args:
        student_logits: [P, V] student logits at the positions that carry targets.
        labels: [P] the true next token at each position.
        target_ids, teacher_logprobs: [P, k] sparse teacher targets, or None (CE only).
        weights: [P, k] with sampled targets; None for top-k.
        estimator: how the target method turns them into D (``core/targets/``).
    Returns:
        (loss, parts) with parts = {"ce": ..., "kd": ...} as floats for logging.
    """
    loss, ce, d = kd_terms(
        student_logits,
        labels,
        target_ids,
        teacher_logprobs,
        alpha=alpha,
        temperature=temperature,
        kind=kind,
        beta=beta,
        weights=weights,
        estimator=estimator,
    )
    return loss, {"ce": ce.item(), "kd": d.item()}


def kd_terms(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    target_ids: torch.Tensor | None,
    teacher_logprobs: torch.Tensor | None,
    *,
    alpha: float,
    temperature: float,
    kind: str = "forward_kl",
    beta: float = 0.5,
    weights: torch.Tensor | None = None,
    estimator: Estimator = bucketed,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`kd_loss` as tensors (loss, CE, KD; KD is NaN for CE only), for callers that sum
    the loss over chunks of positions."""
    z = student_logits.float()
    if alpha >= 1.0 or target_ids is None or teacher_logprobs is None:
        ce = F.cross_entropy(z, labels)
        return ce, ce.detach(), torch.full_like(ce, float("nan"))
    log_z1 = torch.logsumexp(z, dim=-1, keepdim=True)  # [P, 1]
    ce = (log_z1.squeeze(-1) - z.gather(-1, labels[:, None]).squeeze(-1)).mean()
    # At τ = 1 the CE's log-normaliser is the KD's too: one pass over the vocabulary.
    log_z = log_z1 if temperature == 1.0 else None
    d = estimator(kind, z, log_z, temperature, target_ids, teacher_logprobs, weights, beta)
    d = d.mean()
    loss = alpha * ce + (1 - alpha) * temperature**2 * d
    return loss, ce.detach(), d.detach()
