"""On-policy losses against dense references on tiny distributions: the sampled-token
surrogate's expected gradient is the reverse KL's, and the reverse KL / JSD over the teacher's
and the student's top-k together is exact where those ids hold the mass, a lower bound
otherwise, and never looser than the teacher's top-k alone."""

from __future__ import annotations

import pytest
import torch

from distillq.core.maths.losses import bucketed, divergence
from distillq.core.maths.policy_loss import listed_logprobs, sampled_token_reverse_kl, union_ids

V = 11


def _pair(seed: int, rows: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(rows, V, generator=g, dtype=torch.float64) * 2
    p = torch.log_softmax(torch.randn(rows, V, generator=g, dtype=torch.float64) * 2, -1)
    return z, p


def test_the_sampled_token_surrogate_has_the_reverse_kl_gradient_in_expectation():
    z, logp = _pair(0)
    # Dense reference: ∇ KL(s ‖ p) over the whole vocabulary.
    zd = z.clone().requires_grad_(True)
    logs = torch.log_softmax(zd, -1)
    dense = (logs.exp() * (logs - logp)).sum()
    dense.backward()
    # The surrogate, averaged over every token the student could draw, weighted by s(y): the
    # exact expectation of what a sampled batch estimates.
    zs = z.clone().requires_grad_(True)
    logs = torch.log_softmax(zs, -1)
    expected_loss = torch.zeros((), dtype=torch.float64)
    expected_estimate = torch.zeros(len(z), dtype=torch.float64)
    for y in range(V):
        ys = torch.full((len(z),), y)
        s_y = logs.gather(-1, ys[:, None])[:, 0]
        loss, est = sampled_token_reverse_kl(s_y, logp.gather(-1, ys[:, None])[:, 0])
        weight = s_y.detach().exp()
        expected_loss = expected_loss + (weight * loss).sum()
        expected_estimate = expected_estimate + weight * est
    expected_loss.backward()
    assert zd.grad is not None and zs.grad is not None
    torch.testing.assert_close(zs.grad, zd.grad, rtol=1e-10, atol=1e-12)
    reverse_kl = divergence("reverse_kl", logp, torch.log_softmax(z, -1))
    torch.testing.assert_close(expected_estimate, reverse_kl, rtol=1e-10, atol=1e-12)


def test_reverse_kl_and_jsd_over_both_top_ks_are_exact_bounds_and_tighter():
    z, logp = _pair(1, rows=6)
    s = torch.log_softmax(z, -1)
    t_ids = logp.topk(3, -1).indices
    s_ids = s.topk(3, -1).indices
    both = union_ids(t_ids, s_ids)
    # No id listed twice in a row.
    for row in both:
        listed = row[row >= 0].tolist()
        assert len(listed) == len(set(listed))
    for kind in ("reverse_kl", "jsd"):
        dense = divergence(kind, logp, s)
        union = bucketed(
            kind, z, None, 1.0, both.clamp(min=0), listed_logprobs(logp, both), None, 0.5
        ).double()
        alone = bucketed(
            kind, z, None, 1.0, t_ids, listed_logprobs(logp, t_ids), None, 0.5
        ).double()
        assert (union <= dense + 1e-5).all() and (alone <= union + 1e-5).all()
        assert (union > alone + 1e-3).any()  # the student's own top-k adds what it gets wrong
        # Listing every id: the coarse-graining is the identity, the loss the dense one.
        every = torch.arange(V).expand(len(z), V)
        full = bucketed(kind, z, None, 1.0, every, listed_logprobs(logp, every), None, 0.5)
        torch.testing.assert_close(full.double(), dense, rtol=1e-4, atol=1e-5)


def test_the_sampled_token_estimator_reads_the_token_column_and_has_the_reverse_kl_gradient():
    """``sampled_token`` over on-policy targets (the teacher's top-3, then the drawn token in
    the last column, −inf where the top-3 lists it): averaged over every draw y ~ s, its value
    is the reverse KL and its gradient the dense one; a token with no teacher log-prob adds 0."""
    from distillq.core.maths.policy_loss import sampled_token

    z, logp = _pair(3)
    rows = len(z)
    top = logp.topk(3, -1)
    zd = z.clone().requires_grad_(True)
    logs = torch.log_softmax(zd, -1)
    (logs.exp() * (logs - logp)).sum().backward()
    zs = z.clone().requires_grad_(True)
    s = torch.log_softmax(zs, -1)
    total = torch.zeros((), dtype=torch.float64)
    value = torch.zeros(rows, dtype=torch.float64)
    for y in range(V):
        ys = torch.full((rows,), y)
        listed = (top.indices == y).any(-1)
        own = torch.where(listed, float("-inf"), logp[:, y])
        ids = torch.cat([top.indices, ys[:, None]], -1)
        lps = torch.cat([top.values, own[:, None]], -1)
        d = sampled_token("reverse_kl", zs, None, 1.0, ids, lps, None, 0.5)
        w = s.detach().gather(-1, ys[:, None])[:, 0].exp()
        total = total + (w * d).sum()
        value = value + w * d.detach()
    total.backward()
    assert zd.grad is not None and zs.grad is not None
    torch.testing.assert_close(zs.grad, zd.grad, rtol=1e-10, atol=1e-12)
    dense = divergence("reverse_kl", logp, torch.log_softmax(z, -1))
    torch.testing.assert_close(value, dense, rtol=1e-10, atol=1e-12)
    # A server's top-k without the token: its log-prob is unknown, the position adds nothing.
    y = 0
    unknown = torch.cat([top.indices, torch.full((rows, 1), y)], -1)
    lps = torch.cat([top.values, torch.full((rows, 1), float("-inf"))], -1)
    d = sampled_token("reverse_kl", z, None, 1.0, unknown, lps, None, 0.5)
    listed = (top.indices == y).any(-1)
    assert (d[~listed] == 0).all() and (d[listed] != 0).all()
    with pytest.raises(ValueError, match="reverse KL"):
        sampled_token("forward_kl", z, None, 1.0, unknown, lps, None, 0.5)
