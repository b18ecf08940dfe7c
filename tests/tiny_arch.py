"""Tiny randomly initialised Llama and Qwen2 checkpoints with the demo tokenizer, for tests of
what must hold per architecture (GGUF export, students of either family)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from app.demo_models import TEACHER_ASSET


def save_tiny_arch(
    out: Path,
    arch: Literal["llama", "qwen2"],
    seed: int,
    tied: bool,
    hidden: int = 64,
    layers: int = 2,
    init: float = 0.15,
    half: bool = True,
) -> Path:
    """A GQA model (4 heads, 2 kv heads) saved with the demo tokenizer. ``init``: a wider
    initialisation than the default 0.02 gives peaked next-token distributions, so greedy
    decoding is not decided by rounding. Qwen2's q/k/v biases get random values too."""
    import torch
    from transformers import (
        AutoTokenizer,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    tok = AutoTokenizer.from_pretrained(TEACHER_ASSET)
    config_cls, model_cls = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    }[arch]
    torch.manual_seed(seed)
    cfg = config_cls(
        vocab_size=len(tok),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=256,
        tie_word_embeddings=tied,
        initializer_range=init,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.eos_token_id,
    )
    model = model_cls(cfg)
    if arch == "qwen2":
        with torch.no_grad():  # biases start at zero: give them values, or their export is untested
            for layer in model.model.layers:
                for p in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    p.bias.normal_(0, 0.1)
    # ``half``: stored in float16, as the demo teacher is: the f16 GGUF then holds exactly these
    # weights, and the round trip measures the conversion, not float16 rounding of weights.
    (model.to(torch.float16) if half else model).save_pretrained(out)
    tok.save_pretrained(out)
    return out
