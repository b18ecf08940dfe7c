"""A teacher whose head has padding rows past its tokenizer, and a student with fewer: as
Qwen2.5-7B (vocab_size 152,064) distills into Qwen2.5-0.5B (151,936) over a tokenizer of
151,665 tokens. No target may name a padding row: the student's head has no such row."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from distillq.core import stages
from distillq.core.create import create_job
from distillq.core.job.load import load_spec
from distillq.core.job.models import config_vocab_size, load_tokenizer
from distillq.core.targets.shard import Shard
from tests.conftest import write_jsonl
from tests.tiny_arch import save_tiny_arch


@pytest.mark.parametrize("method", ["topk", "sampled"])
def test_targets_stay_inside_the_tokenizer_and_the_smaller_student_trains(
    method, tmp_path, text_records
):
    teacher = save_tiny_arch(tmp_path / "t", "qwen2", 0, tied=False, pad_vocab=128, init=0.5)
    student = save_tiny_arch(tmp_path / "s", "qwen2", 1, tied=True, hidden=32, pad_vocab=16)
    n_tok = len(load_tokenizer(str(teacher)))
    assert config_vocab_size(str(teacher)) == n_tok + 128
    assert config_vocab_size(str(student)) == n_tok + 16
    # Wide enough to reach the tail, where random padding rows would otherwise turn up.
    shape = {"topk": {"top_k": 512}, "sampled": {"samples": 128, "proposal_temperature": 8.0}}
    spec = {
        "name": "pad", "dataset": str(write_jsonl(tmp_path / "d.jsonl", text_records[:16])),
        "shards": 1, "eval_fraction": 0.0,
        "teacher": {"model": str(teacher), "target_method": method, "max_length": 64,
                    "dtype": "float32", **shape[method]},
        "students": [{"name": "s", "model": str(student), "peft": {"method": "full"}}],
    }  # fmt: skip
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    job = create_job(tmp_path / "storage", load_spec(tmp_path / "job.yaml"))
    stages.teacher_shard(job, 0)
    with Shard(job.paths.shard(0)) as r:
        b = r.batch(0, len(r))
        assert b.target_ids is not None and b.target_logprobs is not None
        listed = b.target_ids[np.isfinite(b.target_logprobs)]
    assert listed.max() < n_tok, "a target names a padding row of the teacher's head"
    outcome = stages.replica(job, "s", 0, 0)
    assert outcome.stats is not None and outcome.stats.steps > 0


def test_a_student_head_smaller_than_the_tokenizer_is_refused(tmp_path, text_records):
    from distillq.errors import ModelError

    teacher = save_tiny_arch(tmp_path / "t", "qwen2", 0, tied=False)
    student = save_tiny_arch(tmp_path / "s", "qwen2", 1, tied=True, hidden=32, pad_vocab=-8)
    spec = {
        "name": "pad", "dataset": str(write_jsonl(tmp_path / "d.jsonl", text_records[:8])),
        "shards": 1, "eval_fraction": 0.0, "teacher": {"model": str(teacher)},
        "students": [{"name": "s", "model": str(student)}],
    }  # fmt: skip
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ModelError, match="output rows for a tokenizer of"):
        create_job(tmp_path / "storage", load_spec(tmp_path / "job.yaml"))
