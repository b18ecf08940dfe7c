"""GGUF teachers in process: llama.cpp's targets against transformers' on the same model, a
q8_0 teacher against the f32 one, Ollama's store resolved by tag, and a real quantized model
(SmolLM2-135M-Instruct Q4_1, from its PyPI wheel) scoring and writing responses."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from distillq.core import stages
from distillq.core.create import create_job
from distillq.core.export.gguf.write import write_gguf
from distillq.core.job import ollama
from distillq.core.job.data import Prompt, TokenizeStats, tokenize_record
from distillq.core.job.gguf_models import check_tokenizer, read_info
from distillq.core.job.load import load_spec
from distillq.core.job.models import load_causal_lm, load_tokenizer
from distillq.core.job.spec import GenerateSpec
from distillq.core.student.evaluate import eval_loss
from distillq.core.targets.shard import Shard
from distillq.core.targets.topk import TopK
from distillq.core.teacher.gguf import GgufTeacher
from distillq.core.teacher.local import LocalTeacher
from distillq.errors import ModelError
from distillq.storage import cache
from tests.conftest import write_jsonl
from tests.llama_cpp_check import llama_cpp


@pytest.fixture(scope="module")
def ggufs(tiny_models, tmp_path_factory) -> dict[str, Path]:
    llama_cpp()
    root = tmp_path_factory.mktemp("gguf-teacher")
    return {q: write_gguf(Path(tiny_models["medium_teacher"]), root / f"t-{q}.gguf", q) for q in ("f32", "q8_0")}  # fmt: skip


def _samples(tok, text_records, n=24, max_length=128):
    stats = TokenizeStats()
    out = [tokenize_record(r, i, tok, max_length, stats) for i, r in enumerate(text_records[:n])]
    return [s for s in out if s is not None]


def _targets(teacher, samples):
    return [t[0].targets for t in teacher.run(samples)]


def _gguf_teacher(path, tok, **over):
    kw = dict(temperature=1.0, batch_size=8, max_length=128, generate=None, method=TopK(16), threads=1)  # fmt: skip
    return GgufTeacher(read_info(str(path)), tok, **{**kw, **over})


def _agreement(a, b) -> tuple[float, float]:
    top1 = np.concatenate([x.ids[:, 0] == y.ids[:, 0] for x, y in zip(a, b, strict=True)])
    dlp = max(float(np.abs(x.logprobs[:, 0] - y.logprobs[:, 0]).max()) for x, y in zip(a, b, strict=True))  # fmt: skip
    return float(top1.mean()), dlp


def test_an_f32_gguf_teacher_gives_the_transformers_teachers_targets(
    tiny_models, ggufs, text_records
):
    ref = tiny_models["medium_teacher"]
    tok = load_tokenizer(ref)
    samples = _samples(tok, text_records)
    model = load_causal_lm(ref, dtype=torch.float32)
    local = _targets(LocalTeacher(model, tok, temperature=1.0, batch_size=8, max_length=128, generate=None, method=TopK(16)), samples)  # fmt: skip
    # Packs of 8 sequences in one shared KV cache, and single sequences: the same numbers.
    for batch in (8, 1):
        got = _targets(_gguf_teacher(ggufs["f32"], tok, batch_size=batch), samples)
        top1, dlp = _agreement(local, got)
        assert top1 >= 0.99 and dlp < 0.02, (batch, top1, dlp)
        # Row by row, the same target positions and normalised log-probs (no mass lost).
        for x, y in zip(local, got, strict=True):
            assert x.ids.shape == y.ids.shape
            assert np.all(np.exp(y.logprobs).sum(axis=1) <= 1 + 1e-4)
    # The held-out CE from its full logits is transformers' own.
    want = eval_loss(model, samples)
    got_loss = _gguf_teacher(ggufs["f32"], tok).eval_loss(samples)
    assert got_loss.tokens == want.tokens
    assert abs(got_loss.loss - want.loss) < 1e-3 * want.loss


def test_a_q8_0_teacher_agrees_with_the_f32_one(tiny_models, ggufs, text_records):
    tok = load_tokenizer(tiny_models["medium_teacher"])
    samples = _samples(tok, text_records)
    f32 = _targets(_gguf_teacher(ggufs["f32"], tok), samples)
    q8 = _targets(_gguf_teacher(ggufs["q8_0"], tok), samples)
    top1, dlp = _agreement(f32, q8)
    print(f"q8_0 vs f32: top-1 agreement {top1:.4f}, max |Δ log p| of the top entry {dlp:.4f}")
    assert top1 >= 0.95
    assert dlp < 0.25
    assert read_info(str(ggufs["q8_0"])).quantization == "q8_0"


def _ollama_store(root: Path, gguf: Path, name: str, tag: str) -> Path:
    """A store laid out as Ollama lays it: a manifest per tag, the GGUF as a content-named blob."""
    digest = "sha256:" + hashlib.sha256(gguf.read_bytes()).hexdigest()
    blob = root / "blobs" / digest.replace(":", "-")
    blob.parent.mkdir(parents=True)
    shutil.copyfile(gguf, blob)
    manifest = root / "manifests" / "registry.ollama.ai" / "library" / name / tag
    manifest.parent.mkdir(parents=True)
    layers = [
        {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:" + "0" * 64, "size": 10},
        {"mediaType": ollama.MODEL_LAYER, "digest": digest, "size": blob.stat().st_size},
    ]  # fmt: skip
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": layers}))
    return root


def test_an_ollama_tag_is_resolved_from_the_store_and_runs_as_teacher(
    tiny_models, ggufs, text_records, tmp_path, monkeypatch
):
    store = _ollama_store(tmp_path / "ollama", ggufs["f32"], "tiny", "1b")
    monkeypatch.setenv("OLLAMA_MODELS", str(store))
    found = ollama.resolve("ollama:tiny:1b")
    assert found.gguf.read_bytes() == ggufs["f32"].read_bytes()
    with pytest.raises(ModelError, match=r"ollama pull tiny:7b"):
        ollama.resolve("ollama:tiny:7b")
    assert ollama.manifest_path("ollama:me/x", store).parts[-4:] == ("registry.ollama.ai", "me", "x", "latest")  # fmt: skip

    data = write_jsonl(tmp_path / "d.jsonl", text_records[:20])
    jobs = {}
    for name, model in (("tag", "ollama:tiny:1b"), ("file", str(ggufs["f32"]))):
        spec = {
            "name": name, "dataset": str(data), "shards": 1, "eval_fraction": 0.0,
            "teacher": {"model": model, "top_k": 8, "max_length": 96},
            "students": [{"name": "s", "model": tiny_models["student"]}],
        }  # fmt: skip
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(spec))
        jobs[name] = job = create_job(tmp_path / "storage", load_spec(tmp_path / f"{name}.yaml"))
        stages.teacher_shard(job, 0)
        assert job.info.teacher_quantization == "f32"
    a, b = Shard(jobs["tag"].paths.shard(0)), Shard(jobs["file"].paths.shard(0))
    ba, bb = a.batch(0, len(a)), b.batch(0, len(b))
    assert np.array_equal(ba.target_ids, bb.target_ids)
    assert np.array_equal(ba.target_logprobs, bb.target_logprobs)
    assert cache.read_stats(jobs["tag"].paths.shard_stats(0)).source == "gguf f32"


def test_a_student_of_another_tokenizer_is_refused_against_the_gguf(smollm2_gguf, tiny_models):
    info = read_info(str(smollm2_gguf))
    with pytest.raises(ModelError, match="does not share the GGUF teacher's tokenizer"):
        check_tokenizer(info, load_tokenizer(tiny_models["student"]), "student 's'")


def test_a_gguf_teacher_teaches_a_student_of_another_family_with_its_own_tokenizer(
    smollm2_gguf, phi3_student, text_records, tmp_path
):
    """No ``teacher.tokenizer``, a Phi-3-tokenizer student: the samples are tokenized with the
    GGUF's own tokenizer (not the student's, whose ids would mean other text to the GGUF), and
    the student reads the shard mapped onto its own tokens."""
    from distillq.core.job.gguf_models import load_gguf_tokenizer
    from distillq.core.job.models import tokenizer_fingerprint
    from distillq.core.student import aligned

    data = write_jsonl(tmp_path / "d.jsonl", text_records[:12])
    spec = {
        "name": "x", "dataset": str(data), "shards": 1, "eval_fraction": 0.0,
        "teacher": {"model": str(smollm2_gguf), "top_k": 8, "max_length": 64},
        "students": [{"name": "s", "model": phi3_student, "peft": {"method": "full"}}],
    }  # fmt: skip
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    job = create_job(tmp_path / "storage", load_spec(tmp_path / "job.yaml"))  # not refused
    fp = job.info.fingerprints
    assert fp.tokenizer == tokenizer_fingerprint(load_gguf_tokenizer(str(smollm2_gguf)))
    assert fp.students["s"].tokenizer != fp.tokenizer
    stages.teacher_shard(job, 0)
    shares = aligned.read_shares(aligned.shard_for(job, "s", 0))
    total = shares.exact + shares.chain + shares.split + shares.none
    assert total and shares.exact / total > 0.6, shares


def test_the_real_q4_1_smollm2_scores_and_answers(smollm2_gguf, smollm2_student):
    """The real model: no BOS, 49,152 tokens, Q4_1. It knows what a capital is, and its targets
    at a sentence's positions are a proper distribution over its real tokens."""
    info = read_info(str(smollm2_gguf))
    assert (info.quantization, info.architecture, len(info.tokens)) == ("q4_1", "llama", 49152)
    tok = load_tokenizer(smollm2_student)
    assert tok.bos_token_id is None or tok("a")["input_ids"][:1] != [tok.bos_token_id]
    teacher = _gguf_teacher(smollm2_gguf, tok, threads=2, max_length=96, generate=GenerateSpec(max_new_tokens=8, temperature=0.0))  # fmt: skip
    # Its chat format, without the default system turn (with it, this 135M model rambles).
    chat = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    ids = tok(chat, add_special_tokens=False)["input_ids"]
    [[made]] = list(teacher.run([Prompt(0, ids)]))
    assert "Paris" in made.text, made.text
    assert made.targets is not None and made.targets.ids.shape == (len(made.sample.input_ids) - len(ids), 16)  # fmt: skip
    # Scoring given text: " Paris" after "The capital of France is" is the teacher's top token.
    stats = TokenizeStats()
    sample = tokenize_record({"text": "The capital of France is Paris."}, 1, tok, 96, stats)
    [[scored]] = list(teacher.run([sample]))
    t = scored.targets
    assert t is not None
    paris = tok(" Paris", add_special_tokens=False)["input_ids"][0]
    at = list(sample.input_ids).index(paris) - 1  # the position that predicts " Paris"
    row = list(sample.target_positions()).index(at)
    assert t.ids[row, 0] == paris
    assert np.exp(t.logprobs[row, 0]) > 0.3


def test_gguf_generation_is_seeded_per_record_whatever_the_pack(tiny_models, ggufs, text_records):
    """Responses are decoded several rows at a time; each row draws from its own generator,
    so a record's responses do not depend on what it was batched with (a retried shard
    writes the same text)."""
    tok = load_tokenizer(tiny_models["medium_teacher"])
    prompts = [Prompt(i, tok(r["text"])["input_ids"][:12]) for i, r in enumerate(text_records[:6])]
    gen = GenerateSpec(max_new_tokens=10, temperature=0.9, seed=3, n=2)
    runs = [
        list(_gguf_teacher(ggufs["f32"], tok, batch_size=b, generate=gen).run(prompts))
        for b in (4, 1)
    ]
    for packed, alone in zip(*runs, strict=True):
        assert [t.text for t in packed] == [t.text for t in alone]
        assert len(packed) == 2 and packed[0].kind == "generated"
        for x, y in zip(packed, alone, strict=True):
            assert x.sample.input_ids == y.sample.input_ids
            assert np.allclose(x.targets.logprobs, y.targets.logprobs, atol=2e-2)  # float16
    assert len({t.text for ts in runs[0] for t in ts}) > 6  # sampled, not all alike
