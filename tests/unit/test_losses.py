import math

import pytest
import torch
import torch.nn.functional as F

from distillq.core.maths.losses import bucket_logprobs, divergence, kd_loss


def dense_case(p=7, v=50, seed=0, temperature=1.0):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(p, v, generator=g) * 3
    teacher_logits = torch.randn(p, v, generator=g) * 3
    teacher_lp = torch.log_softmax(teacher_logits / temperature, -1)
    labels = torch.randint(0, v, (p,), generator=g)
    return student, teacher_lp, labels


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_sparse_kd_with_k_equal_vocab_matches_dense_kl(temperature):
    student, teacher_lp, labels = dense_case(temperature=temperature)
    top = torch.topk(teacher_lp, k=teacher_lp.shape[1], dim=-1)
    loss, parts = kd_loss(
        student, labels, top.indices, top.values, alpha=0.0, temperature=temperature
    )
    dense = F.kl_div(
        torch.log_softmax(student / temperature, -1),
        teacher_lp,
        log_target=True,
        reduction="batchmean",
    )
    assert loss.item() == pytest.approx(temperature**2 * dense.item(), rel=1e-5)
    assert parts["kd"] == pytest.approx(dense.item(), rel=1e-5)


def test_gradient_is_finite_when_k_equals_vocab():
    student, teacher_lp, labels = dense_case()
    student.requires_grad_(True)
    top = torch.topk(teacher_lp, k=teacher_lp.shape[1], dim=-1)
    loss, _ = kd_loss(student, labels, top.indices, top.values, alpha=0.5, temperature=1.0)
    loss.backward()
    assert torch.isfinite(student.grad).all()


def test_tail_bucket_carries_the_missing_mass():
    student, teacher_lp, _ = dense_case()
    top = torch.topk(teacher_lp, k=5, dim=-1)
    t, s = bucket_logprobs(student, top.indices, top.values, 1.0)
    assert torch.allclose(t.exp().sum(-1), torch.ones(len(t)), atol=1e-5)
    assert torch.allclose(s.exp().sum(-1), torch.ones(len(s)), atol=1e-5)
    expected_tail = 1 - top.values.exp().sum(-1)
    assert torch.allclose(t[:, -1].exp(), expected_tail, atol=1e-5)


def test_sparse_kl_is_a_lower_bound_and_tightens_with_k():
    student, teacher_lp, labels = dense_case(v=200)
    dense = F.kl_div(
        torch.log_softmax(student, -1), teacher_lp, log_target=True, reduction="batchmean"
    ).item()
    values = []
    for k in (4, 16, 64, 200):
        top = torch.topk(teacher_lp, k=k, dim=-1)
        values.append(
            kd_loss(student, labels, top.indices, top.values, alpha=0.0, temperature=1.0)[1]["kd"]
        )
    assert all(v <= dense + 1e-5 for v in values)
    assert values == sorted(values)
    assert values[-1] == pytest.approx(dense, rel=1e-5)


def test_alpha_one_is_plain_cross_entropy():
    student, teacher_lp, labels = dense_case()
    top = torch.topk(teacher_lp, k=8, dim=-1)
    loss, _ = kd_loss(student, labels, top.indices, top.values, alpha=1.0, temperature=1.0)
    assert loss.item() == pytest.approx(F.cross_entropy(student, labels).item())


def test_divergences_vanish_for_identical_distributions_and_are_positive_otherwise():
    student, teacher_lp, _ = dense_case()
    top = torch.topk(teacher_lp, k=10, dim=-1)
    t, s = bucket_logprobs(student, top.indices, top.values, 1.0)
    for kind in ("forward_kl", "reverse_kl", "jsd"):
        assert divergence(kind, t, t).abs().max().item() < 1e-6
        assert (divergence(kind, t, s) > 0).all()
    # JSD is bounded by log 2 (β = 0.5); the KLs are not.
    assert divergence("jsd", t, s).max().item() <= math.log(2) + 1e-6


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_unlisted_slots_count_as_tail_and_keep_gradients_finite(kind):
    """A server that returns fewer than k entries: the −inf slots must act exactly as if the
    row had only the listed entries (their mass stays in the tail), with finite gradients."""
    torch.manual_seed(0)
    z = torch.randn(5, 40, requires_grad=True)
    labels = torch.randint(0, 40, (5,))
    teacher = torch.log_softmax(torch.randn(5, 40), -1)
    top = torch.topk(teacher, 6, dim=-1)
    ids, lps = top.indices.clone(), top.values.clone()
    lps[:, 3:] = float("-inf")  # only 3 listed per row
    ids[:, 3:] = ids[:, :1]  # unfilled slots repeat a listed id, as dialects.py writes them
    padded, _ = kd_loss(z, labels, ids, lps, alpha=0.3, temperature=1.0, kind=kind)
    (g1,) = torch.autograd.grad(padded, z)
    short, _ = kd_loss(z, labels, ids[:, :3], lps[:, :3], alpha=0.3, temperature=1.0, kind=kind)
    (g2,) = torch.autograd.grad(short, z)
    assert torch.allclose(padded, short, atol=1e-5)
    assert torch.isfinite(g1).all() and torch.allclose(g1, g2, atol=1e-5)


def test_a_one_hot_row_makes_kd_equal_ce():
    """CE fallback (a position with no teacher distribution): its own token at log-prob 0."""
    torch.manual_seed(1)
    z = torch.randn(4, 30)
    labels = torch.randint(0, 30, (4,))
    ids = labels[:, None].repeat(1, 5)
    lps = torch.full((4, 5), float("-inf"))
    lps[:, 0] = 0.0
    loss, _ = kd_loss(z, labels, ids, lps, alpha=0.0, temperature=1.0)
    assert loss.item() == pytest.approx(
        torch.nn.functional.cross_entropy(z, labels).item(), abs=1e-5
    )
