"""Real architectures × PEFT methods: every cell trains (its loss falls), merges a round, and
its outputs load with plain transformers/peft. A cell that cannot work is refused at enqueue.

The architectures differ where students break: Llama (untied head), Qwen2 (tied head, a
vocabulary padded beyond the tokenizer, q/k/v biases), GPT-2 (Conv1D layers, so LoRA and IA3
target other modules), Gemma (scaled embeddings, tied), Phi (partial rotary, biases, dense
MLP names). They share the demo tokenizer, so one teacher cache serves all 25 tracks."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from distillq.core.export.outputs import export_track
from distillq.core.student import merge
from distillq.core.student import train as student
from distillq.core.targets.shard import Shard
from distillq.errors import SpecError
from distillq.storage import checkpoints
from tests.conftest import job_with_cache
from tests.tiny_arch import save_tiny_arch

ARCHS = {
    "llama": dict(tied=False),
    "qwen2": dict(tied=True, pad_vocab=64),
    "gpt2": dict(tied=True),
    "gemma": dict(tied=True),
    "phi": dict(tied=False),
}
METHODS = {
    "lora": {"method": "lora", "r": 4, "alpha": 8},
    "prefix": {"method": "prefix", "num_virtual_tokens": 4},
    "prompt": {"method": "prompt", "num_virtual_tokens": 4},
    "ia3": {"method": "ia3"},
    "full": {"method": "full"},
}
CELLS = [(a, m) for a in ARCHS for m in METHODS]
OUTPUTS: dict[str, dict] = {}

LOAD_WITHOUT_DISTILLQ = """
import json, sys, torch
from transformers import AutoModelForCausalLM
from peft import PeftModel
cells = json.loads(sys.argv[1])
ids = torch.tensor([[5, 6, 7, 8, 9]])
res = {}
for name, (base, out) in cells.items():
    r = {}
    if out["adapter"]:
        m = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out["adapter"])
        r["adapter"] = m(input_ids=ids).logits[0, -1, :8].tolist()
    if out["merged"]:
        m = AutoModelForCausalLM.from_pretrained(out["merged"])
        r["merged"] = m(input_ids=ids).logits[0, -1, :8].tolist()
    res[name] = r
print(json.dumps(res))
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("archs")
    return {
        a: str(save_tiny_arch(root / a, a, seed=i, half=False, init=0.05, **kw))  # type: ignore[arg-type]
        for i, (a, kw) in enumerate(ARCHS.items())
    }


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_models, text_records, models):
    students = [
        {
            "name": f"{a}-{m}",
            "model": models[a],
            "peft": METHODS[m],
            "batch_size": 8,
            # Virtual tokens and IA3's scalings learn slowly at LoRA's rate (peft's own
            # examples train them at 1e-1 to 3e-1).
            "lr": {"prompt": 3e-1, "prefix": 1e-1, "ia3": 1e-1}.get(m, 2e-2),
            "epochs": 3,
            "warmup_steps": 1,
        }
        for a, m in CELLS
    ]
    spec = {
        "name": "matrix",
        "shards": 1,
        "eval_fraction": 0.0,
        "students": students,
        "loss": {"alpha": 0.5},
        "teacher": {"model": tiny_models["teacher"], "top_k": 8, "max_length": 48},
    }
    return job_with_cache(tmp_path_factory.mktemp("matrix"), text_records[:24], spec)


def loss_on(model, job, track) -> float:
    spec = job.spec.student(track)
    with Shard(job.paths.shard(0)) as r, torch.no_grad():
        b = r.batch_of(np.arange(len(r)))
        value, _ = student.position_loss(
            model,
            torch.from_numpy(b.padded.input_ids),
            torch.from_numpy(b.padded.attention_mask),
            torch.from_numpy(b.padded.rows),
            torch.from_numpy(b.padded.cols),
            torch.from_numpy(b.padded.labels),
            torch.from_numpy(b.target_ids),
            torch.from_numpy(b.target_logprobs),
            student.training_loss(job, spec),
        )
    return float(value)


@pytest.mark.parametrize(("arch", "method"), CELLS, ids=[f"{a}-{m}" for a, m in CELLS])
def test_cell_trains_merges_and_exports(job, models, arch, method):
    track = f"{arch}-{method}"
    spec = job.spec.student(track)
    before = loss_on(student.build(spec).eval(), job, track)
    stats = student.train_replica(job, track, 0, 0)
    assert stats.steps == 9
    assert merge.merge_round(job, track, 0).merged
    model = student.build(spec)
    student.load_params(model, checkpoints.latest(job.paths, track).params())
    after = loss_on(model.eval(), job, track)
    print(f"{track}: {before:.3f} -> {after:.3f}")
    assert after < before - 0.01, (before, after)
    out = export_track(model, spec, job.paths.final_dir(track))
    assert (out.adapter is None) == (method == "full")
    assert (out.merged is None) == (method in ("prefix", "prompt"))
    OUTPUTS[track] = (models[arch], dataclasses.asdict(out))


def test_every_cell_loads_with_plain_transformers_and_peft():
    assert len(OUTPUTS) == len(CELLS), "run with the cells above"
    res = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_DISTILLQ, json.dumps(OUTPUTS)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    logits = json.loads(res.stdout.strip().splitlines()[-1])
    for track, got in logits.items():
        assert got, track
        assert all(np.isfinite(v).all() for v in got.values()), track
        if "adapter" in got and "merged" in got:  # merged = base + adapter
            assert got["adapter"] == pytest.approx(got["merged"], abs=1e-4), track


@pytest.mark.parametrize("arch", ["qwen2", "phi"])
def test_a_cell_that_cannot_work_is_refused_at_enqueue(tmp_path, tiny_models, models, arch):
    from distillq.core.create import create_job
    from distillq.core.job.load import load_spec

    (tmp_path / "d.jsonl").write_text('{"text": "a b c"}\n' * 4)
    (tmp_path / "job.yaml").write_text(
        json.dumps(
            {
                "name": "refused",
                "dataset": str(tmp_path / "d.jsonl"),
                "shards": 1,
                "teacher": {"model": tiny_models["teacher"], "top_k": 4},
                "students": [
                    {"name": "s", "model": models[arch], "peft": {"method": "adaption_prompt"}}
                ],
            }
        )
    )
    with pytest.raises(SpecError) as e:
        create_job(tmp_path / "storage", load_spec(tmp_path / "job.yaml"))
    line = str(e.value)
    assert "\n" not in line and "adaption_prompt" in line and arch in line
    assert not (tmp_path / "storage" / "jobs").exists() or not any(
        (tmp_path / "storage" / "jobs").iterdir()
    )
