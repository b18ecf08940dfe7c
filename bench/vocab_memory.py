"""Memory at a real vocabulary: the teacher's scoring and a student's training step at
V = 151,936 (Qwen2.5's head), one-pass path against the chunked one, each in a fresh process.

    python -m bench.run --only vocab_memory

Shapes as issue 13 measured them: a Qwen2-shaped teacher (d=128, 2 layers) and student (d=64,
1 layer, LoRA r=8), tied heads, batch 8 × 256 tokens, k = 64. Random weights: memory and
speed do not depend on what the weights say. Peak RSS is the process's ``ru_maxrss``; "model"
is the RSS once the model is built, before the measured work.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

VOCAB = 151_936
BATCH, LENGTH, K = 8, 256, 64


def _child(role: str, path: str, vocab: int) -> None:
    """Runs in a fresh interpreter: one measurement, printed as JSON."""
    import resource
    import time

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    torch.set_num_threads(2)
    rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # noqa: E731
    d, layers = (128, 2) if role == "teacher" else (64, 1)
    cfg = Qwen2Config(
        vocab_size=vocab, hidden_size=d, intermediate_size=2 * d, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
        max_position_embeddings=512,
    )  # fmt: skip
    model: Any = Qwen2ForCausalLM(cfg)
    ids = torch.randint(0, vocab - 1, (BATCH, LENGTH))
    tokens = BATCH * LENGTH
    if role == "teacher":
        from core.data import Sample
        from core.teacher import score_batch

        model.eval()
        samples = [
            Sample(i, ids[i].tolist(), [False] + [True] * (LENGTH - 1)) for i in range(BATCH)
        ]
        built = rss()
        budget = 1 << 40 if path == "one_pass" else 256 << 20
        t = time.perf_counter()
        score_batch(model, samples, K, 1.0, budget=budget)
        seconds = time.perf_counter() - t
    else:
        from peft import LoraConfig, get_peft_model

        from core import student
        from core.losses import kd_loss
        from core.spec import LossSpec

        model.requires_grad_(False)
        model = get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
        model.train()
        mask = torch.ones_like(ids)
        rows = torch.arange(BATCH).repeat_interleave(LENGTH - 1)
        cols = torch.arange(LENGTH - 1).repeat(BATCH)
        labels = ids[rows, cols + 1]
        t_ids = torch.randint(0, vocab, (len(labels), K))
        t_lps = torch.log_softmax(torch.randn(len(labels), K), -1) - 0.2
        built = rss()
        t = time.perf_counter()
        for _ in range(2):
            if path == "one_pass":
                logits = student.target_logits(model, ids, mask, rows, cols)
                value, _ = kd_loss(logits, labels, t_ids, t_lps, alpha=0.5, temperature=1.0)
            else:
                value, _ = student.position_loss(
                    model, ids, mask, rows, cols, labels, t_ids, t_lps,
                    LossSpec(alpha=0.5, temperature=1.0),
                )  # fmt: skip
            value.backward()
        seconds = (time.perf_counter() - t) / 2
    print(
        json.dumps(
            {
                "peak_mb": round(rss()),
                "model_mb": round(built),
                "tokens_per_s": round(tokens / seconds, 1),
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


def measure(vocab: int = VOCAB) -> dict[str, Any]:
    out: dict[str, Any] = {"vocab": vocab, "batch": BATCH, "length": LENGTH, "k": K}
    for role in ("teacher", "student"):
        old, new = _run(role, "one_pass", vocab), _run(role, "chunked", vocab)
        out[role] = {
            "one_pass": old,
            "chunked": new,
            "peak_ratio": round(new["peak_mb"] / old["peak_mb"], 3),
            "speed_ratio": round(new["tokens_per_s"] / old["tokens_per_s"], 3),
        }
    return out


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2], int(sys.argv[3]))
