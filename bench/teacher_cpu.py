"""What each CPU teacher path costs: the same ~100M-parameter model (random weights: the
matmuls dominate, which is what is measured) as transformers float32 and bfloat16, llama.cpp
f16 and q8_0 in process (``core/teacher/gguf.py``), and the llama-cpp-python server
(``EndpointTeacher``), scoring the same samples at top-k 16. Tokens/s and the process's peak
RSS growth per path, with top-1 agreement and max |Δ log p| of the top entry against float32.

    python -m bench.run --only teacher_cpu
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

from bench import common
from distillq.app.demo_models import TEACHER_ASSET, TinyLlama, llama
from distillq.core.export.gguf.write import write_gguf
from distillq.core.job.data import Prompt
from distillq.core.job.gguf_models import read_info
from distillq.core.job.models import cpu_has_bf16, load_causal_lm, load_tokenizer
from distillq.core.job.spec import GenerateSpec, ServedTeacherSpec
from distillq.core.targets.topk import TopK
from distillq.core.teacher.endpoint import Pool
from distillq.core.teacher.gguf import GgufTeacher
from distillq.core.teacher.local import LocalTeacher
from distillq.core.teacher.served import EndpointTeacher
from tests.llama_server import SERVED_NAME, LlamaServer

SHAPE = TinyLlama(hidden=768, layers=14, heads=12, intermediate=2048, max_positions=512)
K, BATCH, MAX_LENGTH = 16, 8, 256
RECORDS, SERVER_RECORDS, SERVER_TOKENS = 48, 12, 160
GEN_TOKENS = 32


def _model(root: Path) -> Path:
    out = root / "teacher-110m"
    if not (out / "config.json").exists():
        tok = load_tokenizer(str(TEACHER_ASSET))
        model = llama(SHAPE, len(tok), tok.eos_token_id, 0)
        with torch.no_grad():  # peaked distributions, as a trained model's are
            model.lm_head.weight.mul_(8.0)
        model.save_pretrained(out)
        tok.save_pretrained(out)
    return out


def _run(teacher: Any, samples: list[Any]) -> tuple[list[Any], float, float]:
    rss = psutil.Process().memory_info().rss
    t = time.perf_counter()
    got = [x[0].targets for x in teacher.run(samples)]
    seconds = time.perf_counter() - t
    peak = psutil.Process().memory_info().rss - rss
    return got, sum(len(s.input_ids) for s in samples) / seconds, peak / 2**20


def _local(ref: Path, tok: Any, dtype: torch.dtype, gen: GenerateSpec | None = None) -> Any:
    model = load_causal_lm(str(ref), dtype=dtype)
    return LocalTeacher(model, tok, temperature=1.0, batch_size=BATCH, max_length=MAX_LENGTH, generate=gen, method=TopK(K))  # fmt: skip


def _gguf(ref: Path, tok: Any, quant: str, gen: GenerateSpec | None = None) -> Any:
    """The model as a GGUF of ``quant`` (written once), run in process."""
    path = ref.parent / f"teacher-{quant}.gguf"
    if not path.exists():
        write_gguf(ref, path, quant)  # type: ignore[arg-type]
    return GgufTeacher(read_info(str(path)), tok, temperature=1.0, batch_size=BATCH, max_length=MAX_LENGTH, generate=gen, method=TopK(K), threads=2)  # fmt: skip


def _agree(ref: list[Any], got: list[Any]) -> tuple[float, float]:
    """Over positions where ``got`` has a distribution (a server's CE-fallback rows, the true
    token alone at log-prob 0, are no measurement)."""
    top1, dlp = [], 0.0
    for a, b in zip(ref, got, strict=False):
        real = ~((b.logprobs[:, 0] == 0) & ~np.isfinite(b.logprobs[:, 1:]).any(axis=1))
        top1.append((a.ids[:, 0] == b.ids[:, 0])[real])
        if real.any():
            dlp = max(dlp, float(np.abs(a.logprobs[real, 0] - b.logprobs[real, 0]).max()))
    return round(float(np.concatenate(top1).mean()), 4), round(dlp, 4)


def measure(root: Path) -> dict[str, Any]:
    torch.set_num_threads(2)
    ref = _model(root)
    tok = load_tokenizer(str(ref))
    data = common.dataset(root, RECORDS * 2)
    samples = common.samples(data, tok, MAX_LENGTH)[:RECORDS]
    params = sum(p.numel() for p in load_causal_lm(str(ref), dtype=torch.float32).parameters())
    rows: dict[str, dict[str, Any]] = {}
    base: list[Any] = []

    paths = [
        ("transformers float32", lambda: _local(ref, tok, torch.float32)),
        ("transformers bfloat16", lambda: _local(ref, tok, torch.bfloat16)),
        ("llama.cpp f16, in process", lambda: _gguf(ref, tok, "f16")),
        ("llama.cpp q8_0, in process", lambda: _gguf(ref, tok, "q8_0")),
    ]
    for name, make in paths:
        teacher = make()
        _run(teacher, samples[:BATCH])  # warm-up: first-call allocations, thread pools
        got, rate, rss = _run(teacher, samples)
        if not base:
            base = got
        top1, dlp = _agree(base, got)
        rows[name] = {"tokens_per_s": round(rate, 1), "rss_growth_mib": round(rss), "top1": top1, "max_dlogp": dlp}  # fmt: skip
        del teacher
    # The server failed longer prompts here ("failed to find a memory slot", 0.3.36, this
    # model): it scores the first samples of at most SERVER_TOKENS tokens.
    short = [i for i, s in enumerate(samples) if len(s.input_ids) <= SERVER_TOKENS][:SERVER_RECORDS]
    try:
        rows["llama-cpp-python server (HTTP, echo)"] = _served(
            root, tok, [samples[i] for i in short], [base[i] for i in short]
        )
    except Exception as e:  # an optional row: say why, keep every other number
        rows["llama-cpp-python server (HTTP, echo)"] = {"error": f"{type(e).__name__}: {e}"[:200]}
    f32 = rows["transformers float32"]["tokens_per_s"]
    for r in rows.values():
        if "tokens_per_s" in r:
            r["vs_float32"] = round(r["tokens_per_s"] / f32, 2)
    gen = _generation(ref, tok, samples)
    good = [n for n in rows if rows[n].get("top1", 0) >= 0.98]
    fastest = max(good, key=lambda n: rows[n]["tokens_per_s"])
    return {
        "parameters": params,
        "vocab": len(tok),
        "samples": len(samples),
        "tokens": sum(len(s.input_ids) for s in samples),
        "threads": 2,
        "cpu_bf16": cpu_has_bf16(),
        "paths": rows,
        "fastest": fastest,
        "fastest_vs_float32": rows[fastest]["vs_float32"],
        "generation": gen,
    }


def _generation(ref: Path, tok: Any, samples: list[Any]) -> dict[str, Any]:
    """Writing responses (``teacher.generate``): 8 prompts of 32 tokens, 32 new tokens each,
    greedy, batch 8: transformers' ``generate_batch`` against llama.cpp's rows decoded together."""
    prompts = [Prompt(s.record_id, list(s.input_ids[:32])) for s in samples[:8]]
    gen = GenerateSpec(max_new_tokens=GEN_TOKENS, temperature=0.0)
    out: dict[str, Any] = {"prompts": len(prompts), "new_tokens": GEN_TOKENS}
    makers: dict[str, Callable[[], Any]] = {
        "transformers float32": lambda: _local(ref, tok, torch.float32, gen),
        "llama.cpp f16, in process": lambda: _gguf(ref, tok, "f16", gen),
        "llama.cpp q8_0, in process": lambda: _gguf(ref, tok, "q8_0", gen),
    }
    texts: dict[str, list[str]] = {}
    for name, make in makers.items():
        teacher = make()
        list(teacher.run(prompts[:2]))  # warm-up
        t = time.perf_counter()
        made = [x for ts in teacher.run(prompts) for x in ts]
        seconds = time.perf_counter() - t
        new = sum(len(x.sample.input_ids) - 32 for x in made)
        texts[name] = [x.text for x in made]
        out[name] = {"tokens_per_s": round(new / seconds, 1)}
    f32 = out["transformers float32"]["tokens_per_s"]
    for name in makers:
        out[name]["vs_float32"] = round(out[name]["tokens_per_s"] / f32, 2)
        same = [a == b for a, b in zip(texts[name], texts["transformers float32"], strict=True)]
        out[name]["same_text_as_float32"] = f"{sum(same)}/{len(same)}"
    return out


def _served(root: Path, tok: Any, samples: list[Any], base: list[Any]) -> dict[str, Any]:
    gguf = root / "teacher-f16.gguf"
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(LlamaServer(gguf, root / "server.log", n_ctx=2 * MAX_LENGTH))
        spec = ServedTeacherSpec(model=SERVED_NAME, endpoint=(server.url,), top_k=K, max_length=MAX_LENGTH, max_concurrent=1)  # fmt: skip
        http = stack.enter_context(Pool(spec.endpoint, max_concurrent=1, timeout_s=300.0))
        teacher = EndpointTeacher(spec, tok, http, "llama_cpp", max_length=MAX_LENGTH)
        got, rate, _ = _run(teacher, samples)
    # Position 0 has no distribution from echo (CE there): agreement over the rest.
    top1, dlp = _agree([_tail(x) for x in base], [_tail(x) for x in got])
    return {"tokens_per_s": round(rate, 1), "rss_growth_mib": None, "top1": top1, "max_dlogp": dlp}


def _tail(t: Any) -> Any:
    from distillq.core.targets.records import SparseTargets

    return SparseTargets(t.ids[1:], t.logprobs[1:], None, None)
