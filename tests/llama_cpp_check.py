"""llama.cpp (through llama-cpp-python) as the real consumer of the GGUF files distillq writes.

``compare`` loads a GGUF in llama.cpp and the same model in transformers, and measures what
the issue asks of the round trip: logits on a prompt, and 20 greedy tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

LLAMA_HINT = "llama-cpp-python is not installed: `make llama-cpp` builds it once per machine"


def llama_cpp() -> Any:
    return pytest.importorskip("llama_cpp", reason=LLAMA_HINT)


@dataclass
class RoundTrip:
    max_logit_diff: float
    top1_agreement: float
    """Fraction of prompt positions where both pick the same next token."""
    hf_greedy: list[int]
    llama_greedy: list[int]


def hf_logits_and_greedy(
    model_dir: Path, ids: list[int], n: int = 20
) -> tuple[np.ndarray, list[int]]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].numpy()
        seq = list(ids)
        for _ in range(n):
            nxt = int(model(torch.tensor([seq])).logits[0, -1].argmax())
            seq.append(nxt)
    return logits, seq[len(ids) :]


def load(gguf: Path, n_ctx: int = 256) -> Any:
    # A float32 KV cache (type 0): llama.cpp's default f16 cache adds its own rounding, which
    # is not the converter's to answer for.
    return llama_cpp().Llama(
        model_path=str(gguf),
        n_ctx=n_ctx,
        logits_all=True,
        verbose=False,
        n_threads=2,
        type_k=0,
        type_v=0,
    )


def compare(gguf: Path, model_dir: Path, ids: list[int], n: int = 20) -> RoundTrip:
    llm = load(gguf)
    llm.eval(ids)
    got = np.asarray(llm.scores[: len(ids)], dtype=np.float32)
    llm.reset()
    greedy = []
    for tok in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0):
        greedy.append(int(tok))
        if len(greedy) == n:
            break
    want, hf_greedy = hf_logits_and_greedy(model_dir, ids, n)
    agree = float((got.argmax(-1) == want.argmax(-1)).mean())
    return RoundTrip(float(np.abs(got - want).max()), agree, hf_greedy, greedy)
