"""A replica interrupted mid-round continues from its in-round checkpoint and ends with the
same delta as one that was never interrupted, redoing at most ``checkpoint_every_steps``."""

from __future__ import annotations

import pytest
import torch

from distillq.core.student import train as student
from distillq.storage import checkpoints
from tests.conftest import job_with_cache

EVERY = 3


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_models, text_records):
    track = {
        "name": "s",
        "model": tiny_models["student"],
        "peft": {"method": "lora", "r": 4},
        "batch_size": 4,
        "lr": 5e-3,
        "epochs": 2,
        "warmup_steps": 3,
        "checkpoint_every_steps": EVERY,
    }
    spec = {
        "name": "resume",
        "shards": 1,
        "eval_fraction": 0.0,
        "students": [track],
        "loss": {"alpha": 0.3},
        "teacher": {"model": tiny_models["teacher"], "top_k": 8, "max_length": 64},
    }
    return job_with_cache(tmp_path_factory.mktemp("resume"), text_records[:24], spec)


def _delta(job) -> dict[str, torch.Tensor]:
    return checkpoints.load_replica(job.paths, "s", 0, 0)[0]


@pytest.mark.parametrize("stop_at", [4, 7])  # within the first epoch, and within the second
def test_an_interrupted_replica_resumes_to_the_same_delta(job, stop_at, monkeypatch):
    whole = student.train_replica(job, "s", 0, 0)
    want = _delta(job)
    assert whole.resumed_from == 0 and whole.steps == 12  # 6 batches x 2 epochs
    assert not job.paths.replica_progress("s", 0, 0).exists()  # finished: no checkpoint left
    checkpoints.drop_round(job.paths, "s", 0)

    monkeypatch.setenv("DISTILLQ_FAILPOINTS", f"replica_step:s:{stop_at}=raise")
    with pytest.raises(RuntimeError, match="failpoint"):
        student.train_replica(job, "s", 0, 0)
    saved = checkpoints.read_progress(job.paths, "s", 0, 0)
    assert saved is not None and saved[0].steps == stop_at // EVERY * EVERY
    monkeypatch.delenv("DISTILLQ_FAILPOINTS")

    resumed = student.train_replica(job, "s", 0, 0)
    assert resumed.steps == 12
    assert resumed.resumed_from == stop_at // EVERY * EVERY
    assert stop_at - resumed.resumed_from <= EVERY  # redone work is bounded
    got = _delta(job)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7)
    checkpoints.drop_round(job.paths, "s", 0)


def test_a_checkpoint_from_an_older_start_version_is_not_resumed(job, monkeypatch):
    monkeypatch.setenv("DISTILLQ_FAILPOINTS", "replica_step:s:5=raise")
    with pytest.raises(RuntimeError):
        student.train_replica(job, "s", 0, 0)
    saved = checkpoints.read_progress(job.paths, "s", 0, 0)
    assert saved is not None
    monkeypatch.delenv("DISTILLQ_FAILPOINTS")
    import dataclasses

    from distillq.storage import records

    meta_file = sorted(job.paths.replica_progress("s", 0, 0).glob("step-*"))[-1] / "meta.json"
    records.write(meta_file, dataclasses.replace(saved[0], start_version=7))  # another round's
    assert student.train_replica(job, "s", 0, 0).resumed_from == 0
    checkpoints.drop_round(job.paths, "s", 0)
