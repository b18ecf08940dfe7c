"""Memory at a real vocabulary: the teacher's scoring and a student's training step at
V = 151,936 (Qwen2.5's head), three paths, each in a fresh process.

    python -m bench.run --only vocab_memory

Paths: ``naive``, what a transformers loop does (``model(**batch).logits`` + the loss: the
[B, L, V] logits of every position); ``one_pass``, distillq before issue 13 (the head only at
target positions, but all of them at once, with their gradient); ``chunked``, distillq now
(the head and the loss over chunks of positions sized from V and a 256 MB budget, recomputed
in the backward). Shapes as issue 13 measured them: a Qwen2-shaped teacher (d=128, 2 layers)
and student (d=64, 1 layer, LoRA r=8), tied heads, batch 8 × 256 tokens, k = 64; and a
Qwen2.5-0.5B-shaped student (d=896, 24 layers, 14 heads, 2 KV heads, LoRA r=8) at batch
2 × 256. Random weights: memory and speed do not depend on what the weights say. Peak RSS is
the process's ``ru_maxrss``; "model" is the RSS once the model is built, before the measured
work. The teacher's targets are also written to a cache shard, for its bytes per position.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from typing import Any

VOCAB = 151_936
BATCH, LENGTH, K = 8, 256, 64
SHAPES = {  # role: (hidden, layers, heads, kv heads, intermediate, batch)
    "teacher": (128, 2, 4, 2, 256, BATCH),
    "student": (64, 1, 4, 2, 128, BATCH),
    "student_0.5b": (896, 24, 14, 2, 4864, 2),
}
PATHS = ("naive", "one_pass", "chunked")
CACHE_BATCHES = 12


def _child(role: str, path: str, vocab: int) -> None:
    """Runs in a fresh interpreter: one measurement, printed as JSON."""
    import resource
    import time

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    torch.set_num_threads(2)
    rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # noqa: E731
    d, layers, heads, kv, inter, batch = SHAPES[role]
    cfg = Qwen2Config(
        vocab_size=vocab, hidden_size=d, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, tie_word_embeddings=True,
        max_position_embeddings=512,
    )  # fmt: skip
    model: Any = Qwen2ForCausalLM(cfg)
    ids = torch.randint(0, vocab - 1, (batch, LENGTH)) if role != "teacher" else _text(batch)
    tokens = batch * LENGTH
    extra: dict[str, Any] = {}
    if role == "teacher":
        from distillq.core.job.data import Sample
        from distillq.core.targets.topk import TopK
        from distillq.core.teacher.local import score_batch

        model.eval()
        samples = [
            Sample(i, ids[i].tolist(), [False] + [True] * (LENGTH - 1)) for i in range(batch)
        ]
        built = rss()
        t = time.perf_counter()
        if path == "naive":
            with torch.no_grad():
                logits = model(input_ids=ids).logits[:, :-1].float()
                torch.topk(torch.log_softmax(logits, -1), K, dim=-1)
        else:
            budget = 1 << 40 if path == "one_pass" else 256 << 20
            if path == "one_pass":
                from distillq.core.teacher import local

                local.CACHE_ROWS = 1 << 30  # one chunk: every target position at once
            made = score_batch(model, samples, TopK(K), 1.0, budget=budget)
        seconds = time.perf_counter() - t
        peak = rss()
        if path == "chunked":
            # A shard's worth of positions, so the file's fixed overhead does not count.
            more = [_text(batch, offset=j * batch) for j in range(1, CACHE_BATCHES)]
            for extra_ids in more:
                batch_samples = [
                    Sample(i, extra_ids[i].tolist(), [False] + [True] * (LENGTH - 1))
                    for i in range(batch)
                ]
                samples += batch_samples
                made += score_batch(model, batch_samples, TopK(K), 1.0)
            extra["cache_bytes_per_position"] = _cache_bytes(samples, made, vocab)
    else:
        from peft import LoraConfig, get_peft_model

        from distillq.core.job.spec import LossSpec
        from distillq.core.maths.losses import kd_loss
        from distillq.core.student import train as student

        model.requires_grad_(False)
        model = get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
        model.train()
        mask = torch.ones_like(ids)
        rows = torch.arange(batch).repeat_interleave(LENGTH - 1)
        cols = torch.arange(LENGTH - 1).repeat(batch)
        labels = ids[rows, cols + 1]
        t_ids = torch.randint(0, vocab, (len(labels), K))
        t_lps = torch.log_softmax(torch.randn(len(labels), K), -1) - 0.2
        built = rss()
        steps = 1 if role == "student_0.5b" else 2
        t = time.perf_counter()
        for _ in range(steps):
            if path == "naive":
                logits = model(input_ids=ids, attention_mask=mask).logits[rows, cols]
                value, _ = kd_loss(logits, labels, t_ids, t_lps, alpha=0.5, temperature=1.0)
            elif path == "one_pass":
                logits = student.target_logits(model, ids, mask, rows, cols)
                value, _ = kd_loss(logits, labels, t_ids, t_lps, alpha=0.5, temperature=1.0)
            else:
                value, _ = student.position_loss(
                    model, ids, mask, rows, cols, labels, t_ids, t_lps,
                    LossSpec(alpha=0.5, temperature=1.0),
                )  # fmt: skip
            value.backward()
        seconds = (time.perf_counter() - t) / steps
        peak = rss()
    print(
        json.dumps(
            {
                "peak_mb": round(peak),
                "model_mb": round(built),
                "tokens_per_s": round(tokens / seconds, 1),
                **extra,
            }
        )
    )


def _run(role: str, path: str, vocab: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.vocab_memory", role, path, str(vocab)],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _text(batch: int, offset: int = 0) -> Any:
    """[batch, LENGTH] token ids of demo text (the demo tokenizer): the cache stores the input
    ids too, and text compresses unlike uniform random ids."""
    import torch

    ids = _demo_ids()[offset * LENGTH : (offset + batch) * LENGTH]
    return torch.tensor(ids).view(batch, LENGTH)


@functools.cache
def _demo_ids() -> list[int]:
    import tempfile
    from pathlib import Path

    from distillq.app import demo_models
    from distillq.core.job.models import load_tokenizer

    tok = load_tokenizer(str(demo_models.TEACHER_ASSET))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.jsonl"
        demo_models.write_demo_dataset(path, max_records=2000)
        text = "".join(json.loads(line)["text"] for line in path.read_text().splitlines())
    return list(tok(text)["input_ids"])


def _cache_bytes(samples: list[Any], made: list[Any], vocab: int) -> float:
    """Bytes per target position of a cache shard holding these targets (int32 ids)."""
    import tempfile
    from pathlib import Path

    from bench.common import write_targets

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "shard.h5"
        positions = write_targets(out, list(zip(samples, made, strict=True)), vocab, K)
        return round(out.stat().st_size / positions, 1)


def measure(vocab: int = VOCAB) -> dict[str, Any]:
    out: dict[str, Any] = {"vocab": vocab, "length": LENGTH, "k": K}
    for role, shape in SHAPES.items():
        runs = {path: _run(role, path, vocab) for path in PATHS}
        new = runs["chunked"]
        out[role] = {
            **runs,
            "batch": shape[-1],
            **{
                f"peak_ratio_vs_{p}": round(new["peak_mb"] / runs[p]["peak_mb"], 3)
                for p in ("naive", "one_pass")
            },
            **{
                f"speed_ratio_vs_{p}": round(new["tokens_per_s"] / runs[p]["tokens_per_s"], 3)
                for p in ("naive", "one_pass")
            },
        }
    return out


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2], int(sys.argv[3]))
