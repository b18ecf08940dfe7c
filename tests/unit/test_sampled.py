"""Sampled teacher targets: unbiased in expectation, converge to dense KD, and reproducible.

Tolerances. A test of unbiasedness averages the gradient of M independent draws. By the
central limit theorem the mean's error on each vocabulary coordinate is ~N(0, SE²), with SE
the per-coordinate sample std / √M. |error| ≤ 5·SE fails by chance with probability 5.7e-7
per coordinate: over the 40 coordinates × 6 cases here, about once in 7,000 runs. The test
is not vacuous: the top-k estimator with the same width misses the same bound by far
(``test_top_k_is_biased_where_sampling_is_not``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distillq.core.maths.losses import estimated, kd_terms
from distillq.core.targets import sampled as sampling
from distillq.core.targets.sampled import SAMPLER, Sampled, sample_weights
from distillq.core.targets.shard import Shard
from distillq.core.targets.topk import TopK

V, N, M = 40, 8, 20_000
KINDS = ("forward_kl", "reverse_kl", "jsd")


def teacher_and_student(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logp = torch.log_softmax(torch.randn(V, generator=g) * 2.0, -1)
    return logp, torch.randn(V, generator=g)


def draws(logp: torch.Tensor, ratio: float | None, n: int, m: int, seed: int = 1):
    """m independent draws of n tokens each: (ids, logprobs, weights) as the student reads
    them from the cache (float16 log-probs, weights rebuilt from counts)."""
    u = torch.rand(m, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    ids, lps, counts, off = sampling.draw_rows(logp.expand(m, -1), u, ratio)
    lp16 = lps.to(torch.float16).numpy()
    w = sample_weights(counts.numpy(), n, lp16, None if off is None else off.numpy(), ratio)
    return ids, torch.from_numpy(lp16.astype(np.float32)), torch.from_numpy(w)


def per_draw_grads(kind, zs, ids, lps, w) -> tuple[torch.Tensor, torch.Tensor]:
    """Each draw's KD estimate and its gradient in the student logits: [M], [M, V]."""
    m = len(ids)
    z = zs.expand(m, -1).clone().requires_grad_(True)
    labels = torch.zeros(m, dtype=torch.long)
    loss, _, _ = kd_terms(
        z, labels, ids, lps, alpha=0.0, temperature=1.0, kind=kind, weights=w, estimator=estimated
    )
    (loss * m).backward()  # the mean over rows, undone: row i's gradient is draw i's
    from distillq.core.maths.losses import sampled_divergence

    with torch.no_grad():
        lz = torch.logsumexp(z, -1, keepdim=True)
        values = sampled_divergence(kind, z, lz, ids, lps, w)
    assert z.grad is not None
    return values, z.grad


def expectation(kind, zs, logp16):
    """The estimator's exact expectation: every token, weighted by its true probability,
    with the float16 log-probs the cache stores. (Loss, gradient)."""
    z = zs[None].clone().requires_grad_(True)
    ids = torch.arange(V)[None]
    w = logp16.double().exp().float()[None]
    loss, _, d = kd_terms(
        z, torch.zeros(1, dtype=torch.long), ids, logp16[None], alpha=0.0, temperature=1.0,
        kind=kind, weights=w, estimator=estimated,
    )  # fmt: skip
    loss.backward()
    assert z.grad is not None
    return float(d), z.grad[0]


def dense(kind, zs, logp):
    """Dense KD (every token listed, exact log-probs): loss and gradient."""
    z = zs[None].clone().requires_grad_(True)
    loss, _, d = kd_terms(
        z, torch.zeros(1, dtype=torch.long), torch.arange(V)[None], logp[None], alpha=0.0,
        temperature=1.0, kind=kind,
    )  # fmt: skip
    loss.backward()
    assert z.grad is not None
    return float(d), z.grad[0]


@pytest.mark.parametrize("ratio", [None, 0.5], ids=["from-p", "proposal-t2"])
@pytest.mark.parametrize("kind", KINDS)
def test_expected_gradient_is_the_dense_gradient(kind, ratio):
    logp, zs = teacher_and_student()
    ids, lps, w = draws(logp, ratio, N, M)
    values, grads = per_draw_grads(kind, zs, ids, lps, w)
    se = grads.std(0) / math.sqrt(M)
    _, g_exp = expectation(kind, zs, logp.half().float())
    err = (grads.mean(0) - g_exp).abs()
    assert bool((err <= 5 * se + 1e-6).all()), f"max error {float((err / se).max()):.1f} SE"
    # The expectation with the cache's float16 log-probs is the dense gradient: fp16 keeps
    # 11 bits, so log p is off by ≤ |log p|·2⁻¹¹ (here |log p| < 16, so < 0.8%), and p / s
    # ratios by the same share.
    d_dense, g_dense = dense(kind, zs, logp)
    torch.testing.assert_close(g_exp, g_dense, atol=0.01 * float(g_dense.abs().max()), rtol=0)
    # The loss value too: its mean over the draws is the dense KD value.
    se_v = float(values.std()) / math.sqrt(M)
    assert abs(float(values.mean()) - d_dense) <= 5 * se_v + 0.01 * abs(d_dense)


def test_top_k_is_biased_where_sampling_is_not():
    """The same bound, applied to top-k targets of the same width, fails: the tail bucket is
    a biased picture of the teacher (why sampled targets exist)."""
    logp, zs = teacher_and_student()
    top = torch.topk(logp, N)
    z = zs[None].clone().requires_grad_(True)
    loss, _, _ = kd_terms(
        z, torch.zeros(1, dtype=torch.long), top.indices[None], top.values[None], alpha=0.0,
        temperature=1.0, kind="forward_kl",
    )  # fmt: skip
    loss.backward()
    assert z.grad is not None
    _, g_dense = dense("forward_kl", zs, logp)
    ids, lps, w = draws(logp, None, N, M)
    _, grads = per_draw_grads("forward_kl", zs, ids, lps, w)
    se = grads.std(0) / math.sqrt(M)
    assert float(((z.grad[0] - g_dense).abs() / se).max()) > 50


@pytest.mark.parametrize("kind", KINDS)
def test_loss_converges_to_dense_kd_as_draws_grow(kind):
    """Over 64 teacher distributions, the estimate's error shrinks like 1/√N: within 5 standard
    errors (σ₁/√(N·P), σ₁ measured at N = 1) at every N, and small in absolute terms at N = 4,096."""
    p_rows = 64
    g = torch.Generator().manual_seed(3)
    logp = torch.log_softmax(torch.randn(p_rows, V, generator=g) * 2.0, -1)
    zs = torch.randn(p_rows, V, generator=g)
    labels = torch.zeros(p_rows, dtype=torch.long)
    ids_all = torch.arange(V).expand(p_rows, -1)
    _, _, d_dense = kd_terms(zs, labels, ids_all, logp, alpha=0.0, temperature=1.0, kind=kind)
    errors = {}
    for n in (1, 16, 256, 4096):
        u = torch.rand(p_rows, n, dtype=torch.float64, generator=g)
        ids, lps, counts, _ = sampling.draw_rows(logp, u, None)
        w = counts.float() / n
        _, _, d = kd_terms(
            zs,
            labels,
            ids,
            lps,
            alpha=0.0,
            temperature=1.0,
            kind=kind,
            weights=w,
            estimator=estimated,
        )
        errors[n] = abs(float(d) - float(d_dense))
    # σ₁ of the mean over rows at N = 1, estimated from 400 single draws.
    singles = []
    for _ in range(400):
        u = torch.rand(p_rows, 1, dtype=torch.float64, generator=g)
        ids, lps, counts, _ = sampling.draw_rows(logp, u, None)
        _, _, d = kd_terms(
            zs,
            labels,
            ids,
            lps,
            alpha=0.0,
            temperature=1.0,
            kind=kind,
            weights=counts.float(),
            estimator=estimated,
        )
        singles.append(float(d))
    sigma1 = float(np.std(singles))
    for n, e in errors.items():
        assert e <= 5 * sigma1 / math.sqrt(n) + 1e-4, (n, e, sigma1)
    assert errors[4096] < 0.05 * max(abs(float(d_dense)), 0.1)


def test_mixed_loss_is_ce_plus_the_estimate():
    logp, zs = teacher_and_student()
    ids, lps, w = draws(logp, None, N, 4)
    z = zs.expand(4, -1)
    labels = torch.tensor([1, 2, 3, 4])
    loss, ce, d = kd_terms(
        z, labels, ids, lps, alpha=0.3, temperature=1.0, weights=w, estimator=estimated
    )
    # Each part by hand, not from the function's own outputs: CE on the labels, and the
    # paper's forward-KL estimate Σ w (log p − log s) over the drawn ids.
    log_s = torch.log_softmax(z.float(), dim=-1)
    ce_by_hand = torch.nn.functional.nll_loss(log_s, labels)
    lp = torch.where(w > 0, lps.float(), 0.0)
    kd_by_hand = (w * (lp - log_s.gather(-1, ids))).sum(-1).mean()
    torch.testing.assert_close(ce, ce_by_hand)
    torch.testing.assert_close(d, kd_by_hand)
    torch.testing.assert_close(float(loss), 0.3 * float(ce_by_hand) + 0.7 * float(kd_by_hand))


def test_draws_are_unique_ids_with_counts_that_sum_to_n():
    logp, _ = teacher_and_student()
    u = torch.rand(500, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ids, lps, counts, off = sampling.draw_rows(logp.expand(500, -1), u, None)
    assert off is None
    assert (counts.sum(-1) == 12).all()
    for row_ids, row_counts, row_lps in zip(ids, counts, lps, strict=True):
        used = row_counts > 0
        assert len(set(row_ids[used].tolist())) == int(used.sum())  # unique
        assert torch.isinf(row_lps[~used]).all() and (row_ids[~used] == 0).all()
        assert (row_lps[used][:-1] >= row_lps[used][1:]).all()  # sorted for delta coding
        torch.testing.assert_close(row_lps[used], logp[row_ids[used]])
    # Frequencies follow p: the most likely token's share is within 5 standard errors.
    top = int(logp.argmax())
    share = float(counts[ids == top].sum()) / (500 * 12)
    p = float(logp.exp()[top])
    assert abs(share - p) <= 5 * math.sqrt(p * (1 - p) / 6000)


# ------------------------------------------------------------------- the cache, end to end


def spec(tiny_models, **teacher):
    return {
        "name": "sampled",
        "shards": 2,
        "eval_fraction": 0.0,
        "students": [
            {"name": "s", "model": tiny_models["student"], "peft": {"method": "lora", "r": 4}}
        ],
        "loss": {"alpha": 0.3},
        "teacher": {
            "model": tiny_models["teacher"],
            "max_length": 64,
            "batch_size": 4,
            "target_method": "sampled",
            "samples": 12,
            **teacher,
        },
    }


def shard_arrays(path) -> dict[str, np.ndarray]:
    import h5py

    with h5py.File(path, "r") as f:
        return {name: f[name][:] for name in f}


@pytest.fixture(scope="module")
def sampled_job(tmp_path_factory, tiny_models, text_records):
    from tests.conftest import job_with_cache

    return job_with_cache(tmp_path_factory.mktemp("sampled"), text_records[:24], spec(tiny_models))


def test_identical_seeds_give_identical_shards(
    sampled_job, tmp_path_factory, tiny_models, text_records
):
    """The same records drawn again, in other batches (batch size 3, no length grouping), give
    the same shard, dataset for dataset; another seed gives other draws."""
    from tests.conftest import job_with_cache

    again = job_with_cache(
        tmp_path_factory.mktemp("again"),
        text_records[:24],
        spec(tiny_models, batch_size=3, group_by_length=False),
    )
    other = job_with_cache(
        tmp_path_factory.mktemp("other"), text_records[:24], spec(tiny_models, seed=1)
    )
    for shard in range(2):
        a = shard_arrays(sampled_job.paths.shard(shard))
        b = shard_arrays(again.paths.shard(shard))
        assert set(a) == set(b) and "target_counts" in a
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
        c = shard_arrays(other.paths.shard(shard))
        np.testing.assert_array_equal(a["input_ids"], c["input_ids"])
        assert not np.array_equal(a["target_counts"], c["target_counts"])


def test_the_cache_records_how_it_drew_and_gives_weights(sampled_job):
    with Shard(sampled_job.paths.shard(0)) as r:
        assert r.attrs["format"] == "distillq.teacher/3"
        assert r.attrs["target_method"] == "sampled" and r.attrs["samples"] == 12
        assert r.method == Sampled(samples=12, seed=0, temperature=1.0, proposal_temperature=1.0)
        assert r.attrs["sample_seed"] == 0 and r.attrs["sampler"] == SAMPLER
        b = r.batch(0, len(r))
        assert b.target_weights is not None
        np.testing.assert_allclose(b.target_weights.sum(1), 1.0, rtol=1e-6)
        # Each stored log-prob is the teacher's at that id: a retried draw never changes them.
        assert np.isfinite(b.target_logprobs[b.target_weights > 0]).all()


def test_a_proposal_temperature_gives_importance_weights(tmp_path, tiny_models, text_records):
    from tests.conftest import job_with_cache

    job = job_with_cache(tmp_path, text_records[:8], spec(tiny_models, proposal_temperature=2.0))
    with Shard(job.paths.shard(0)) as r:
        b = r.batch(0, len(r))
        assert (
            isinstance(r.method, Sampled) and r.method.ratio == 0.5 and b.target_weights is not None
        )
        counts = shard_arrays(job.paths.shard(0))["target_counts"][: len(b.target_weights)]
        # Weights are no longer count / N: p / q re-weights each drawn token.
        assert not np.allclose(b.target_weights, counts / 12)
        # Σ w estimates Σ p = 1, unbiased: its mean over many positions is near 1.
        assert abs(float(b.target_weights.sum(1).mean()) - 1.0) < 0.15


def test_a_student_round_trains_on_sampled_targets(sampled_job, monkeypatch):
    from distillq.core.maths.losses import estimated
    from distillq.core.student import merge
    from distillq.core.student import train as student
    from distillq.storage import checkpoints

    # Watch what the replica hands its loss (the real loss still runs): the shard's weights
    # and the sampled estimator, never the top-k bucketing of unweighted targets.
    seen: list[tuple[object, object]] = []
    real = student.position_loss

    def watched(*args: object) -> object:
        seen.append((args[9], args[10]))
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(student, "position_loss", watched)
    stats = student.train_replica(sampled_job, "s", 0, 0)
    assert seen and all(w is not None and e is estimated for w, e in seen)
    with Shard(sampled_job.paths.shard(0)) as r:
        whole = r.batch(0, len(r)).target_weights
    assert whole is not None
    assert sum(len(w) for w, _ in seen) == len(whole)  # type: ignore[arg-type]
    assert np.isclose(sum(float(w.sum()) for w, _ in seen), float(whole.sum()))  # type: ignore[union-attr]
    merge.merge_round(sampled_job, "s", 0)
    assert stats.steps > 0 and stats.curve
    assert all(math.isfinite(x) for point in stats.curve for x in point)
    assert checkpoints.latest(sampled_job.paths, "s").version == 1


def test_draw_record():
    d = Sampled(samples=12, seed=0, temperature=1.0, proposal_temperature=1.0)
    assert d.ratio is None
    assert Sampled(samples=12, seed=0, temperature=1.0, proposal_temperature=2.0).ratio == 0.5


# ------------------------------------------------------------------- the spec


def test_sampled_is_refused_for_an_endpoint_and_its_keys_need_it():
    from distillq.core.job.load import spec_from_dict
    from distillq.errors import SpecError

    def teacher(**t):
        return spec_from_dict(
            {
                "name": "j",
                "dataset": "/d.jsonl",
                "teacher": {"model": "t", **t},
                "students": [{"name": "s", "model": "m"}],
            }
        ).teacher

    from distillq.core.targets import registry

    t = teacher(target_method="sampled")
    assert registry.build(t) == Sampled(12, 0, 1.0, 1.0) and t.width == 12
    assert registry.build(teacher()) == TopK(64) and teacher().width == 64
    with pytest.raises(SpecError, match="an endpoint returns only its top-k"):
        teacher(target_method="sampled", endpoint=["http://h:8000/v1"])
    with pytest.raises(SpecError, match=r"teacher\.samples applies to target_method: sampled"):
        teacher(samples=4)
    with pytest.raises(SpecError, match=r"teacher\.proposal_temperature applies to"):
        teacher(proposal_temperature=2.0)
    with pytest.raises(SpecError, match=r"teacher.samples=0 must lie in \[1, 255\]"):
        teacher(target_method="sampled", samples=0)


@pytest.mark.parametrize("kind", KINDS)
def test_a_hot_proposal_that_draws_a_near_impossible_token_stays_finite(kind):
    """log p ≈ −94 drawn from a proposal at t = 100: the weight w ≈ e⁻⁹¹ (p / q) is still a
    float32 (subnormal), but s / p ≈ e⁹⁰ alone overflows; w · s / p is taken in log space."""
    logits = torch.zeros(V)
    logits[0] = -90.0
    logp = torch.log_softmax(logits, -1)
    ids, lps, w = draws(logp, 0.01, N, 64)
    assert bool((ids == 0).any())  # the near-impossible token was drawn
    z = torch.randn(64, V).requires_grad_(True)
    loss, _, _ = kd_terms(
        z, torch.zeros(64, dtype=torch.long), ids, lps, alpha=0.0, temperature=1.0, kind=kind,
        weights=w, estimator=estimated,
    )  # fmt: skip
    loss.backward()
    assert z.grad is not None
    assert torch.isfinite(loss) and bool(torch.isfinite(z.grad).all())
