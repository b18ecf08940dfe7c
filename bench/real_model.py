"""A real pretrained teacher: SmolLM2-135M-Instruct (``app/real_models.py``).

    python -m bench.run --only real_model

1. **Throughput per CPU path**, the same given English text (the real demo's questions, four
   per record) scored at top-16, batch 8, two threads: transformers float32 (the dequantized
   conversion), llama.cpp in process on the shipped Q4_1 GGUF, and on f16 / q8_0 GGUFs that
   distillq's own exporter writes from the conversion. Agreement against float32 as in
   ``teacher_cpu``. Then writing responses (8 chat prompts, 32 new tokens, greedy).
2. **Quality**: the real demo's job (``app/real_demo.py``: the teacher writes the answers to
   prompt-only chat, students cut from its layers learn them) with its ``kd`` and ``ce`` tracks
   at seeds 0, 1, 2 (the batch order), all six tracks on one teacher cache, through two real
   workers; held-out loss per track against the teacher's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.cluster import run_job
from bench.teacher_cpu import BATCH, MAX_LENGTH, K, _agree, _run
from distillq.app import real_demo
from distillq.app.real_models import fetch
from distillq.core.export.gguf.write import write_gguf
from distillq.core.job.data import Prompt, TokenizeStats, encode_prompt, tokenize_record
from distillq.core.job.gguf_models import read_info
from distillq.core.job.models import load_causal_lm, load_tokenizer
from distillq.core.job.spec import GenerateSpec
from distillq.core.targets.topk import TopK
from distillq.core.teacher.gguf import GgufTeacher
from distillq.core.teacher.local import LocalTeacher

RECORDS, SEEDS, QUALITY_RECORDS = 32, (0, 1, 2), 150


def _gguf_teacher(path: Path, tok: Any, gen: GenerateSpec | None = None) -> GgufTeacher:
    return GgufTeacher(read_info(str(path)), tok, temperature=1.0, batch_size=BATCH, max_length=MAX_LENGTH, generate=gen, method=TopK(K), threads=2)  # fmt: skip


def _local_teacher(hf: Path, tok: Any, gen: GenerateSpec | None = None) -> LocalTeacher:
    model = load_causal_lm(str(hf), dtype=torch.float32)
    return LocalTeacher(model, tok, temperature=1.0, batch_size=BATCH, max_length=MAX_LENGTH, generate=gen, method=TopK(K))  # fmt: skip


def throughput(root: Path) -> dict[str, Any]:
    torch.set_num_threads(2)
    f = fetch("smollm2")
    tok = load_tokenizer(str(f.hf))
    qs = real_demo.real_prompts(4 * RECORDS, seed=1)
    stats = TokenizeStats()
    records = [{"text": " ".join(qs[4 * i : 4 * i + 4])} for i in range(RECORDS)]
    tokenized = [tokenize_record(r, i, tok, MAX_LENGTH, stats) for i, r in enumerate(records)]
    samples = [s for s in tokenized if s is not None]
    makers: dict[str, Callable[..., Any]] = {
        "transformers float32": lambda gen=None: _local_teacher(f.hf, tok, gen),
        "llama.cpp Q4_1 (shipped), in process": lambda gen=None: _gguf_teacher(f.gguf, tok, gen),
    }
    for quant in ("f16", "q8_0"):
        path = root / f"smollm2-{quant}.gguf"
        write_gguf(f.hf, path, quant)
        makers[f"llama.cpp {quant} (written by distillq), in process"] = lambda gen=None, p=path: (
            _gguf_teacher(p, tok, gen)
        )
    rows: dict[str, Any] = {}
    base: list[Any] = []
    for name, make in makers.items():
        teacher = make()
        _run(teacher, samples[:BATCH])
        got, rate, rss = _run(teacher, samples)
        base = base or got
        top1, dlp = _agree(base, got)
        rows[name] = {"tokens_per_s": round(rate, 1), "rss_growth_mib": round(rss), "top1": top1, "max_dlogp": dlp}  # fmt: skip
        del teacher
    f32 = rows["transformers float32"]["tokens_per_s"]
    for r in rows.values():
        r["vs_float32"] = round(r["tokens_per_s"] / f32, 2)
    chats = [{"messages": [{"role": "user", "content": q}]} for q in qs[:8]]
    prompts = [Prompt(i, encode_prompt(c, tok)) for i, c in enumerate(chats)]
    gen = GenerateSpec(max_new_tokens=32, temperature=0.0)
    generation: dict[str, Any] = {}
    for name, make in makers.items():
        teacher = make(gen)
        list(teacher.run(prompts[:2]))
        t = time.perf_counter()
        made = [x for ts in teacher.run(prompts) for x in ts]
        new = sum(len(x.sample.input_ids) - len(p.input_ids) for x, p in zip(made, prompts, strict=True))  # fmt: skip
        generation[name] = {"tokens_per_s": round(new / (time.perf_counter() - t), 1), "first": made[0].text[:120]}  # fmt: skip
        del teacher
    g32 = generation["transformers float32"]["tokens_per_s"]
    for r in generation.values():
        r["vs_float32"] = round(r["tokens_per_s"] / g32, 2)
    return {
        "samples": len(samples),
        "tokens": sum(len(s.input_ids) for s in samples),
        "scoring": rows,
        "generation": generation,
    }


def quality(root: Path) -> dict[str, Any]:
    """The real demo's job with kd and ce at three seeds, one cache, two workers."""
    spec = real_demo.prepare_real(root, QUALITY_RECORDS)
    tracks = spec.pop("students")
    spec["students"] = [
        {**t, "name": f"{t['name']}-s{seed}", "seed": seed} for seed in SEEDS for t in tracks
    ]
    spec["name"] = "bench-real-quality"
    job, seconds = run_job(root / "cluster", spec)
    from distillq.core.report import report

    data, _ = report.collect(job)
    assert data.teacher is not None
    per = {n: round(s.eval_loss or float("nan"), 4) for n, s in data.students.items()}
    ref = data.teacher.eval_loss or 0.0
    gap = {
        seed: round(1 - (per[f"kd-s{seed}"] - ref) / (per[f"ce-s{seed}"] - ref), 3)
        for seed in SEEDS
    }
    return {
        "records": QUALITY_RECORDS,
        "eval_samples": data.eval_records,
        "teacher_heldout": round(data.teacher.eval_loss or float("nan"), 4),
        "untrained": round(next(iter(data.students.values())).baseline_loss or float("nan"), 4),
        "heldout": per,
        "kd_gap_closed": gap,
        "kd_beats_ce": sum(per[f"kd-s{s}"] < per[f"ce-s{s}"] for s in SEEDS),
        "job_seconds": round(seconds),
    }


def measure(root: Path) -> dict[str, Any]:
    return {"throughput": throughput(root), "quality": quality(root)}
