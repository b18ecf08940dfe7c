"""The teacher's generation stage against a bare ``model.generate`` as the vocabulary grows.

    python -m bench.run --only generation_vocab

At a 150k–260k vocabulary (Qwen 2.5/3, Gemma 3) the LM head costs as much as the body: a
Llama of Gemma-3-270M's shape (18 layers of width 640: 100M parameters in the body, 168M in a
262k head) whose head has V rows, with a tokenizer of V entries (the demo's, widened: ids past
its own decode to nothing), so no head row is masked. Both sides write the
same responses to the same 16 prompts of 32 tokens, 32 new tokens each, batch 4, sampled at
temperature 1 with one seed, two torch threads:

- ``bare``: ``model.generate`` per batch, nothing kept (what a hand-written loop does);
- ``stage``: ``LocalTeacher.run`` on the same prompts (``core/teacher/generation.py``), which
  also keeps the top-16 targets of every generated position.

Each side is the best of ``REPEATS`` runs, the two interleaved. Random weights: the matmuls
and the per-step work over V are what is timed, not the text.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from distillq.app.demo_models import TEACHER_ASSET, TinyLlama, llama
from distillq.core.job.data import Prompt
from distillq.core.job.models import load_tokenizer
from distillq.core.job.spec import GenerateSpec
from distillq.core.targets.topk import TopK
from distillq.core.teacher.local import LocalTeacher

SHAPE = TinyLlama(hidden=640, layers=18, heads=10, intermediate=2048, max_positions=512)
VOCABS = (4_096, 151_936, 262_144)
PROMPTS, PROMPT_TOKENS, NEW_TOKENS, BATCH, K, REPEATS = 16, 32, 32, 4, 16, 2


class _Wide:
    """The demo tokenizer with ``vocab`` entries: what the stage asks of a tokenizer (its
    length, special ids, decode) as a real tokenizer of that size would answer."""

    def __init__(self, tok: Any, vocab: int) -> None:
        self._tok, self._vocab = tok, vocab

    def __len__(self) -> int:
        return self._vocab

    def decode(self, ids: list[int], **kw: Any) -> str:
        return str(self._tok.decode([i for i in ids if i < len(self._tok)], **kw))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tok, name)


def _prompts(tok: Any) -> list[Prompt]:
    ids = tok(TEACHER_ASSET.joinpath("tokenizer.json").read_text()[:20_000])["input_ids"]
    return [Prompt(i, ids[i * 97 : i * 97 + PROMPT_TOKENS]) for i in range(PROMPTS)]


@torch.no_grad()
def _bare(model: Any, tok: Any, prompts: list[Prompt], seed: int) -> float:
    torch.manual_seed(seed)
    t = time.perf_counter()
    new = 0
    for b in range(0, len(prompts), BATCH):
        ids = torch.tensor([p.input_ids for p in prompts[b : b + BATCH]])
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=NEW_TOKENS,
            do_sample=True,
            temperature=1.0,
            top_k=None,
            pad_token_id=tok.eos_token_id,
            eos_token_id=tok.eos_token_id,
        )
        new += out[:, ids.shape[1] :].numel()
    return new / (time.perf_counter() - t)


def _stage(model: Any, tok: Any, prompts: list[Prompt]) -> float:
    gen = GenerateSpec(max_new_tokens=NEW_TOKENS, temperature=1.0)
    teacher = LocalTeacher(model, tok, temperature=1.0, batch_size=BATCH, max_length=512, generate=gen, method=TopK(K))  # fmt: skip
    t = time.perf_counter()
    new = sum(len(x.sample.input_ids) - PROMPT_TOKENS for ts in teacher.run(prompts) for x in ts)
    return new / (time.perf_counter() - t)


def measure(root: Path | None = None) -> dict[str, Any]:
    torch.set_num_threads(2)
    tok = load_tokenizer(str(TEACHER_ASSET))
    prompts = _prompts(tok)
    rows: dict[str, Any] = {}
    for vocab in VOCABS:
        model = llama(SHAPE, vocab, tok.eos_token_id, 0).eval()
        # No early stop: both sides make every token (a random model rarely says EOS anyway).
        model.generation_config.eos_token_id = None
        head = SHAPE.hidden * vocab
        body = sum(p.numel() for p in model.model.layers.parameters())
        wide = _Wide(tok, vocab)
        _bare(model, tok, prompts[:BATCH], 0)  # warm-up
        _stage(model, wide, prompts[:BATCH])
        bare, stage = 0.0, 0.0
        for r in range(REPEATS):
            bare = max(bare, _bare(model, tok, prompts, r))
            stage = max(stage, _stage(model, wide, prompts))
        rows[str(vocab)] = {
            "head_vs_body": round(head / body, 2),
            "bare_tokens_per_s": round(bare, 1),
            "stage_tokens_per_s": round(stage, 1),
            "stage_vs_bare": round(stage / bare, 3),
        }
        print(vocab, rows[str(vocab)], flush=True)
        del model
    return {
        "shape": f"Llama {SHAPE.layers} layers x {SHAPE.hidden}",
        "prompts": PROMPTS,
        "prompt_tokens": PROMPT_TOKENS,
        "new_tokens": NEW_TOKENS,
        "batch": BATCH,
        "top_k": K,
        "vocabs": rows,
    }


if __name__ == "__main__":
    measure()
