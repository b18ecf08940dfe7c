"""Rounds through storage equal plain sequential training when R = 1 and outer_lr = 1."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distillq.core.maths.losses import kd_loss
from distillq.core.student import merge
from distillq.core.student import train as student
from distillq.core.targets.shard import Shard
from distillq.storage import checkpoints
from tests.conftest import job_with_cache


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_models, text_records):
    student_spec = {
        "name": "s",
        "model": tiny_models["student"],
        "peft": {"method": "lora", "r": 4},
        "batch_size": 6,
        "lr": 5e-3,
        "epochs": 2,
        "warmup_steps": 3,
    }
    spec = {
        "name": "rounds",
        "shards": 2,
        "eval_fraction": 0.0,
        "students": [student_spec],
        "loss": {"alpha": 0.3},
        "teacher": {"model": tiny_models["teacher"], "top_k": 8, "max_length": 64},
    }
    return job_with_cache(tmp_path_factory.mktemp("rounds"), text_records[:48], spec)


def plain_loop(job) -> dict[str, torch.Tensor]:
    """The same training written as one loop over both shards, no storage in between."""
    spec = job.spec.student("s")
    model = student.build(spec)
    params = student.trainable(model)
    opt = torch.optim.AdamW(params.values(), lr=spec.lr, weight_decay=spec.weight_decay)
    step = 0
    for shard in range(2):
        with Shard(job.paths.shard(shard)) as r:
            rng = np.random.default_rng([spec.seed, shard, 0])
            n_batches = math.ceil(len(r) / spec.batch_size)
            # Batches of similar length: samples sorted by token count, cut into batch_size.
            by_length = np.argsort(np.diff(r.offsets), kind="stable")
            groups = [by_length[i : i + spec.batch_size] for i in range(0, len(r), spec.batch_size)]
            for _ in range(spec.epochs):
                for b in (r.batch_of(groups[i]) for i in rng.permutation(n_batches)):
                    logits = student.target_logits(
                        model,
                        torch.from_numpy(b.padded.input_ids),
                        torch.from_numpy(b.padded.attention_mask),
                        torch.from_numpy(b.padded.rows),
                        torch.from_numpy(b.padded.cols),
                    )
                    loss, _ = kd_loss(
                        logits,
                        torch.from_numpy(b.padded.labels),
                        torch.from_numpy(b.target_ids),
                        torch.from_numpy(b.target_logprobs),
                        alpha=0.3,
                        temperature=1.0,
                    )
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params.values(), 1.0)
                    for g in opt.param_groups:
                        g["lr"] = student.lr_at(step, spec, job.info.total_steps["s"])
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    step += 1
    return student.snapshot(model)


def test_two_rounds_equal_one_sequential_loop(job):
    for shard in range(2):
        student.train_replica(job, "s", shard, 0)
        merge.merge_round(job, "s", shard)
    ckpt = checkpoints.latest(job.paths, "s")
    assert ckpt.version == 2 and ckpt.meta.merged_shards == [0, 1]
    assert ckpt.meta.step == job.info.total_steps["s"]
    assert int(ckpt.optimizer()["state"][0]["step"]) == ckpt.meta.step  # AdamW state carried over
    expected = plain_loop(job)
    got = ckpt.params()
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-4, atol=1e-5)


def test_a_replica_is_made_of_restore_step_and_save(job):
    """The composed steps on their own: restore picks up the latest version and its step count,
    one step changes the trainable parameters, save writes stats that mark the replica done."""
    import time

    from distillq.core.targets.shard import Shard

    latest = checkpoints.latest(job.paths, "s")
    t = student.restore(job, "s")
    assert t.start_version == (latest.version if latest else 0)
    assert t.step0 == (latest.meta.step if latest else 0)
    before = {n: p.detach().clone() for n, p in t.params.items()}
    with Shard(job.paths.shard(0)) as r:
        batch = r.batch(0, 4)
    loss, parts = student.train_step(t, [batch], student.training_loss(job, t.spec), lr=1e-3)
    assert loss > 0 and set(parts) >= {"ce", "kd"}
    assert any(not torch.equal(before[n], p) for n, p in t.params.items())
    loop = student.LoopStats(steps=1, tokens=int(batch.padded.attention_mask.sum()), positions=1)
    stats = student.save(job, t, 0, 0, loop, started=time.time())
    assert checkpoints.replica_stats(job.paths, "s", 0, 0) == stats
    delta, _ = checkpoints.load_replica(job.paths, "s", 0, 0)
    assert any(d.abs().sum() > 0 for d in delta.values())
