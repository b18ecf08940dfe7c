"""Losses on the student's own samples (on-policy distillation): the student wrote the tokens,
the teacher scored them, and the student moves toward the teacher where it went.

Two estimators of the reverse KL, KL(s ‖ p) per position, s the student and p the teacher:

- **on the sampled token** (:func:`sampled_token_reverse_kl`), what the on-policy distillation
  recipes use when the teacher returns only the log-prob of the token the student wrote: the
  per-token estimate log s(y) − log p(y) at the student's own draw y ~ s. Its mean is the
  reverse KL; as a loss, the surrogate sg(log s(y) − log p(y)) · log s(y) has the reverse KL's
  gradient in expectation over the student's draws (score function: E_s[∇ log s] = 0), with
  the student's token as the action and each position's future held fixed (discount 0);
  :func:`sampled_token` is that estimate as an ``Estimator`` (``losses.py``) over on-policy
  targets, which list each position's sampled token in their last column;
- **over listed tokens** (:func:`union_ids`), where the teacher can give log-probs at any ids (a
  local teacher, a GGUF one): the ids listed at a position are the teacher's top-k and the
  student's own top-k together, and the bucketed divergence in ``losses`` (listed ids + one
  tail bucket) is then the exact reverse KL / JSD of the coarse-grained distributions: a lower
  bound on the dense one, tighter than the teacher's top-k alone, equal when the listed ids
  hold all the mass.
"""

from __future__ import annotations

import torch


def sampled_token_reverse_kl(
    student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(surrogate loss, estimate) per sampled position, each [P].

    ``student_logprobs``: [P] log s(y) of the tokens the student drew (with its graph);
    ``teacher_logprobs``: [P] log p(y) the teacher gave the same tokens. The surrogate's
    gradient has the reverse KL's in expectation over y ~ s; the estimate (no graph) has the
    reverse KL as its expectation: it is what is logged."""
    estimate = (student_logprobs - teacher_logprobs.to(student_logprobs.dtype)).detach()
    return estimate * student_logprobs, estimate


def union_ids(teacher_ids: torch.Tensor, student_ids: torch.Tensor) -> torch.Tensor:
    """[P, k + m] ids: the teacher's top-k [P, k], then the student's top-m [P, m] with the ids
    the teacher already listed replaced by -1 (the caller gives those slots log-prob −inf, so
    no id is listed twice and each bucket is counted once)."""
    seen = (student_ids[:, :, None] == teacher_ids[:, None, :]).any(-1)
    return torch.cat([teacher_ids, torch.where(seen, -1, student_ids)], dim=-1)


def listed_logprobs(logprobs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """[P, n] log-probs of a full distribution [P, V] at ``ids`` [P, n]; −inf at -1 slots (not
    listed: the loss leaves them in the tail)."""
    got = logprobs.gather(-1, ids.clamp(min=0))
    return torch.where(ids >= 0, got, float("-inf"))


def sampled_token(
    kind: str,
    z: torch.Tensor,
    log_z: torch.Tensor | None,
    temperature: float,
    target_ids: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    weights: torch.Tensor | None,
    beta: float,
) -> torch.Tensor:
    """Reverse KL per position estimated at the student's own token (``on_policy.estimator:
    token``): its value is log s(y) − log p(y), its gradient the surrogate's
    (:func:`sampled_token_reverse_kl`). ``y`` is the last column of ``target_ids`` (on-policy
    scoring lists each position's sampled token there); ``log p(y)`` is the finite log-prob
    listed for ``y``. A position whose token the teacher gave no log-prob (a server's top-k
    without it) contributes 0."""
    if kind != "reverse_kl":
        raise ValueError(f"the sampled-token estimator estimates reverse KL, not {kind}")
    zt = z / temperature if temperature != 1.0 else z
    if log_z is None:
        log_z = torch.logsumexp(zt, dim=-1, keepdim=True)
    y = target_ids[:, -1]
    log_s = zt.gather(-1, y[:, None])[:, 0] - log_z[:, 0]
    tp = teacher_logprobs.to(log_s.dtype)
    listed = (target_ids == y[:, None]) & torch.isfinite(tp)
    log_p = torch.where(listed, tp, float("-inf")).amax(-1)
    known = torch.isfinite(log_p)
    surrogate, estimate = sampled_token_reverse_kl(log_s, torch.where(known, log_p, log_s.detach()))
    value = estimate + (surrogate - surrogate.detach())
    return torch.where(known, value, torch.zeros_like(value))
