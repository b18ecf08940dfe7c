"""GGUF export: llama.cpp loads what the converter writes and computes the same model.

Three checkpoints cover what the converter must get right: the trained demo teacher (Llama,
tied head: q/k reordering for llama.cpp's rope), a Llama with grouped-query attention and an
untied head, and a Qwen2 (q/k/v biases, NEOX rope, no reordering).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from distillq.app.demo_models import TEACHER_ASSET
from distillq.core.export.gguf import export_gguf, write_gguf
from distillq.errors import ExportError
from tests.llama_cpp_check import compare, llama_cpp, load
from tests.tiny_arch import save_tiny_arch

PROMPT = "def fibonacci(n):\n    if n < 2:\n        return n\n"


def _tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TEACHER_ASSET)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gguf-models")
    return {
        "demo-teacher-llama": TEACHER_ASSET,
        "llama-gqa-untied": save_tiny_arch(root / "llama", "llama", seed=0, tied=False),
        "qwen2-bias-tied": save_tiny_arch(root / "qwen2", "qwen2", seed=1, tied=True),
    }


@pytest.mark.parametrize("name", ["demo-teacher-llama", "llama-gqa-untied", "qwen2-bias-tied"])
def test_llama_cpp_computes_the_same_model(name: str, checkpoints, tmp_path: Path) -> None:
    llama_cpp()
    model_dir = checkpoints[name]
    gguf = write_gguf(model_dir, tmp_path / f"{name}-f16.gguf", "f16")
    ids = _tok()(PROMPT)["input_ids"]
    rt = compare(gguf, model_dir, ids)
    print(f"{name}: f16 max |logit diff| = {rt.max_logit_diff:.2e}")
    assert rt.max_logit_diff < 1e-2
    assert rt.llama_greedy == rt.hf_greedy


def test_q8_0_loads_and_stays_close(checkpoints, tmp_path: Path) -> None:
    llama_cpp()
    model_dir = checkpoints["demo-teacher-llama"]
    f16 = write_gguf(model_dir, tmp_path / "t-f16.gguf", "f16")
    q8 = write_gguf(model_dir, tmp_path / "t-q8_0.gguf", "q8_0")
    assert q8.stat().st_size < 0.6 * f16.stat().st_size
    ids = _tok()(PROMPT)["input_ids"]
    rt = compare(q8, model_dir, ids)
    print(f"q8_0 max |logit diff| = {rt.max_logit_diff:.2e}")
    print(f"q8_0 top-1 agreement = {rt.top1_agreement:.3f}")
    # 8-bit blocks: a looser bound than f16's, and the same next token at nearly every position
    # (greedy text is not compared: one flipped near-tie changes everything after it).
    assert rt.max_logit_diff < 0.25
    assert rt.top1_agreement >= 0.9


def test_llama_cpp_tokenizes_text_as_transformers_does(tmp_path: Path) -> None:
    llama_cpp()
    gguf = write_gguf(TEACHER_ASSET, tmp_path / "t.gguf", "f16")
    llm = load(gguf)
    tok = _tok()
    for text in [
        PROMPT,
        "  Unicode: héllo wörld — ünïcode\t\ttabs\n\n\nx = {'a': 1}",
        "It's 2026!",
    ]:
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == tok(text)["input_ids"]


def test_export_writes_both_quants_and_a_modelfile(tmp_path: Path) -> None:
    out = export_gguf(TEACHER_ASSET, tmp_path / "gguf", "kd")
    assert set(out.files) == {"f16", "q8_0"}
    text = Path(out.modelfile).read_text()
    assert text.startswith("FROM ./kd-f16.gguf")
    # the chat template's turns, as Ollama's Go template
    assert "<|user|>\n{{ .Prompt }}<|endoftext|>\n<|assistant|>\n{{ .Response }}" in text
    assert 'PARAMETER stop "<|endoftext|>"' in text


def test_an_unsupported_architecture_is_refused_in_one_line(tmp_path: Path) -> None:
    model = tmp_path / "gpt2ish"
    shutil.copytree(TEACHER_ASSET, model)
    cfg = json.loads((model / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (model / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ExportError) as e:
        write_gguf(model, tmp_path / "x.gguf")
    msg = str(e.value)
    assert "GPT2LMHeadModel" in msg and "LlamaForCausalLM" in msg and "\n" not in msg
    assert not (tmp_path / "x.gguf").exists()


def test_bf16_checkpoints_read_exactly(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from distillq.core.export.gguf.tensors import read_tensors

    t = torch.randn(3, 5).to(torch.bfloat16)
    save_file({"w": t}, tmp_path / "model.safetensors")
    ((name, arr),) = list(read_tensors(tmp_path))
    assert name == "w" and np.array_equal(arr, t.float().numpy())


def test_a_job_whose_student_llama_cpp_cannot_take_still_finishes(tmp_path: Path) -> None:
    from distillq.core.export.outputs import export_gguf_outputs
    from distillq.storage.records import Outputs

    model = tmp_path / "phi"
    shutil.copytree(TEACHER_ASSET, model)
    cfg = json.loads((model / "config.json").read_text())
    cfg["architectures"] = ["PhiForCausalLM"]
    (model / "config.json").write_text(json.dumps(cfg))
    out = export_gguf_outputs(str(model), tmp_path / "gguf", "s")
    assert out == Outputs(
        gguf_skipped="GGUF export does not support architecture PhiForCausalLM: supported are "
        "LlamaForCausalLM, Qwen2ForCausalLM; the safetensors model is still in final/merged"
    )
    skipped = export_gguf_outputs(None, tmp_path / "gguf", "s").gguf_skipped
    assert skipped is not None and skipped.startswith("no merged model")


def test_conversion_imports_no_torch(tmp_path: Path) -> None:
    """A node that only converts (or a user's `distillq export`) needs numpy and gguf, not torch."""
    import subprocess
    import sys

    code = (
        "import sys; from pathlib import Path; from distillq.core.export.gguf import export_gguf; "
        f"export_gguf(Path({str(TEACHER_ASSET)!r}), Path({str(tmp_path)!r}), 't'); "
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "t-q8_0.gguf").exists()
