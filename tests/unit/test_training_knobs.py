"""The student's training knobs: gradient accumulation equals one big batch, gradient
checkpointing changes nothing but memory, bfloat16 autocast trains, max_grad_norm clips,
length-grouped batches pad less and stay seeded; the teacher's grouped batches give the same
cache as consecutive ones."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from distillq.core.job.spec import StudentSpec
from distillq.core.maths.batching import PaddingCount, batch_groups
from distillq.core.student import train as student
from distillq.core.targets.shard import Shard
from distillq.errors import SpecError
from tests.conftest import job_with_cache


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_models, text_records):
    # Records of very different lengths, so grouping by length has padding to save.
    records = [{"text": r["text"][: 40 + (i * 37) % 260]} for i, r in enumerate(text_records[:48])]
    spec = {
        "name": "knobs",
        "shards": 1,
        "eval_fraction": 0.0,
        "students": [
            {
                "name": "s",
                "model": tiny_models["student"],
                "peft": {"method": "lora", "r": 4},
                "batch_size": 4,
                "lr": 5e-3,
            }
        ],
        "loss": {"alpha": 0.3},
        "teacher": {"model": tiny_models["teacher"], "top_k": 8, "max_length": 96},
    }
    return job_with_cache(tmp_path_factory.mktemp("knobs"), records, spec)


def trainer(job, **changes):
    t = student.restore(job, "s")
    if changes:
        t.spec = dataclasses.replace(t.spec, **changes)
        if "gradient_checkpointing" in changes:  # a property of the built model
            t.model = student.build(t.spec)
            t.params = student.trainable(t.model)
            t.opt = torch.optim.AdamW(t.params.values(), lr=t.spec.lr)
    return t


def grads(t, batches, loss):
    """The accumulated gradient of a step on ``batches`` (the step itself is not taken)."""
    step, zero = t.opt.step, t.opt.zero_grad
    captured = {}
    t.opt.step = lambda: captured.update({n: p.grad.clone() for n, p in t.params.items()})
    t.opt.zero_grad = lambda **_: None
    try:
        value, _ = student.train_step(t, batches, loss, lr=1e-3)
    finally:
        t.opt.step, t.opt.zero_grad = step, zero
        zero(set_to_none=True)
    return value, captured


def assert_same_step(a, b):
    (v1, g1), (v2, g2) = a, b
    assert v1 == pytest.approx(v2, rel=1e-5)
    for n in g1:
        torch.testing.assert_close(g2[n], g1[n], rtol=1e-4, atol=1e-6)


def first_batch(job, n=6):
    with Shard(job.paths.shard(0)) as r:
        return [r.batch_of(np.arange(0, n))]


def test_accumulated_micro_batches_equal_one_big_batch(job):
    loss = student.training_loss(job, job.spec.student("s"))
    t = trainer(job, max_grad_norm=0.0)
    with Shard(job.paths.shard(0)) as r:
        whole = r.batch_of(np.arange(0, 8))
        # Micro-batches of unequal target positions: a plain mean of their means would differ.
        micro = [r.batch_of(np.arange(0, 3)), r.batch_of(np.arange(3, 8))]
    assert len(micro[0].padded.labels) != len(micro[1].padded.labels)
    assert_same_step(grads(t, [whole], loss), grads(t, micro, loss))


def test_gradient_checkpointing_gives_the_same_gradients(job):
    loss = student.training_loss(job, job.spec.student("s"))
    b = first_batch(job)
    on = trainer(job, gradient_checkpointing=True)
    assert on.model.get_base_model().is_activation_checkpointing
    assert_same_step(grads(trainer(job, gradient_checkpointing=False), b, loss), grads(on, b, loss))


def test_bfloat16_autocast_trains_near_float32(job):
    loss = student.training_loss(job, job.spec.student("s"))
    b = first_batch(job)
    v32, _ = grads(trainer(job), b, loss)
    t16 = trainer(job, dtype="bfloat16")
    v16, g16 = grads(t16, b, loss)
    assert v16 == pytest.approx(v32, rel=0.05) and v16 != v32  # it did run in bfloat16
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in g16.values())
    before = student.snapshot(t16.model)
    student.train_step(t16, b, loss, lr=1e-2)
    assert any(not torch.equal(before[n], p.detach()) for n, p in t16.params.items())


def test_max_grad_norm_clips_the_gradient(job):
    loss = student.training_loss(job, job.spec.student("s"))
    b = first_batch(job)
    norms = {}
    for limit in (0.0, 1e-3):
        _, g = grads(trainer(job, max_grad_norm=limit), b, loss)
        norms[limit] = torch.linalg.vector_norm(torch.stack([x.norm() for x in g.values()]))
    assert norms[0.0] > 1e-2  # unclipped, the gradient is far larger than the limit
    assert float(norms[1e-3]) == pytest.approx(1e-3, rel=1e-3)


def test_batches_grouped_by_length_pad_less_and_cover_every_sample_once():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 300, size=103)
    grouped = batch_groups(lengths, 8, by_length=True)
    plain = batch_groups(lengths, 8, by_length=False)
    assert sorted(np.concatenate(grouped).tolist()) == list(range(103))
    assert [len(g) for g in grouped] == [len(g) for g in plain]
    # A pure function of the lengths: the same batches every time.
    assert all(
        np.array_equal(a, b) for a, b in zip(grouped, batch_groups(lengths, 8, True), strict=True)
    )
    count = PaddingCount()
    count.add(lengths, grouped, 8)
    after, before = count.fractions()
    assert after < before / 5, (after, before)


def test_a_replica_reports_its_padding_and_repeats_its_batches(job):
    first = student.train_replica(job, "s", 0, 0)
    assert first.padding is not None and first.padding_ungrouped is not None
    assert first.padding < first.padding_ungrouped / 2
    again = student.train_replica(job, "s", 0, 0)
    assert [c[1:] for c in again.curve] == [c[1:] for c in first.curve]  # seeded: same steps


def test_grad_accum_divides_the_steps_of_a_replica(job):
    spec = job.spec.student("s")
    plain = student.train_replica(job, "s", 0, 0)
    accumulated_spec = dataclasses.replace(spec, grad_accum=3)
    other = dataclasses.replace(
        job, spec=dataclasses.replace(job.spec, students=(accumulated_spec,))
    )
    accumulated = student.train_replica(other, "s", 0, 0)
    assert accumulated.steps == -(-plain.steps // 3)
    assert accumulated.tokens == plain.tokens
    assert accumulated.target_positions == plain.target_positions


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("grad_accum", 0, "grad_accum=0 must be positive"),
        ("max_grad_norm", -1.0, "max_grad_norm=-1.0 must be 0"),
    ],
)
def test_bad_knobs_are_refused_with_one_line(field, value, words):
    with pytest.raises(SpecError, match=words):
        StudentSpec(name="s", model="m", **{field: value})


def test_an_unknown_dtype_is_refused_at_load(tmp_path, tiny_models):
    from distillq.core.job.load import load_spec

    (tmp_path / "d.jsonl").write_text('{"text": "a"}\n')
    (tmp_path / "job.yaml").write_text(
        f"name: j\ndataset: {tmp_path / 'd.jsonl'}\n"
        f"students: [{{name: s, model: {tiny_models['student']}, dtype: float16}}]\n"
    )
    with pytest.raises(SpecError, match="dtype"):
        load_spec(tmp_path / "job.yaml")


def test_the_teacher_grouped_by_length_writes_the_same_cache(job, tmp_path):
    import contextlib

    from distillq.core import stages
    from distillq.core.teacher.make import make_teacher
    from distillq.storage.cache import read_stats

    teacher = dataclasses.replace(job.spec.teacher, group_by_length=False)
    plain = dataclasses.replace(job, spec=dataclasses.replace(job.spec, teacher=teacher))
    out = tmp_path / "plain.h5"
    with contextlib.ExitStack() as stack:
        made, tok = make_teacher(plain, stack)
        stages._write_cache(plain, made, tok, plain.split.shard_ids(0), out, 0)
    with Shard(job.paths.shard(0)) as a, Shard(out) as b:
        assert np.array_equal(a.input_ids, b.input_ids)
        assert np.array_equal(a.positions, b.positions)
        x, y = a.batch(0, len(a)), b.batch(0, len(b))
    assert (x.target_ids == y.target_ids).mean() > 0.99  # a near-tie may swap under other padding
    np.testing.assert_allclose(
        np.sort(x.target_logprobs, 1), np.sort(y.target_logprobs, 1), atol=2e-2
    )
    record = read_stats(job.paths.shard_stats(0))
    assert record.padding is not None and record.padding_ungrouped is not None
    assert record.padding < record.padding_ungrouped
