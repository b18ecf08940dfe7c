"""Tiny randomly initialised checkpoints with the demo tokenizer, for tests of what must hold
per architecture: Llama and Qwen2 (GGUF export, students of either family), and GPT-2 (Conv1D
layers), Gemma and Phi for the architecture × PEFT matrix."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from distillq.app.demo_models import TEACHER_ASSET


def save_tiny_arch(
    out: Path,
    arch: Literal["llama", "qwen2", "gpt2", "gemma", "phi", "qwen3", "gemma3"],
    seed: int,
    tied: bool,
    hidden: int = 64,
    layers: int = 2,
    init: float = 0.15,
    half: bool = True,
    pad_vocab: int = 0,
    no_bos: bool = False,
) -> Path:
    """A GQA model (4 heads, 2 kv heads) saved with the demo tokenizer. ``init``: a wider
    initialisation than the default 0.02 gives peaked next-token distributions, so greedy
    decoding is not decided by rounding. Qwen2's q/k/v biases get random values too.
    ``pad_vocab``: rows of the embedding beyond the tokenizer, as Qwen ships its checkpoints.
    ``no_bos``: a tokenizer without a BOS token (GPT-2, Qwen2 and SmolLM2 have none).
    Qwen3 and Gemma 3 get decoupled heads, as their checkpoints have: head size 32 whatever
    the width (heads x head size != width), and per-layer attention kinds (``layer_types``)."""
    import torch
    import transformers
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TEACHER_ASSET)
    if no_bos:
        tok.bos_token = None
    name = {
        "llama": "Llama", "qwen2": "Qwen2", "gpt2": "GPT2", "gemma": "Gemma", "phi": "Phi",
        "qwen3": "Qwen3", "gemma3": "Gemma3",
    }[arch]  # fmt: skip
    config_cls = getattr(transformers, "Gemma3TextConfig" if arch == "gemma3" else f"{name}Config")
    model_cls = getattr(transformers, "GPT2LMHeadModel" if arch == "gpt2" else f"{name}ForCausalLM")
    torch.manual_seed(seed)
    common = dict(
        vocab_size=len(tok) + pad_vocab,
        tie_word_embeddings=tied,
        initializer_range=init,
        bos_token_id=None if no_bos else tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.eos_token_id,
    )
    # GPT-2 names its sizes its own way and has neither GQA nor a gated MLP.
    shape = (
        dict(n_embd=hidden, n_layer=layers, n_head=4, n_positions=256)
        if arch == "gpt2"
        else dict(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=2 * hidden,
            max_position_embeddings=256,
            **({"head_dim": hidden // 4} if arch == "gemma" else {}),
            **({"head_dim": 32} if arch in ("qwen3", "gemma3") else {}),
        )
    )
    cfg = config_cls(**common, **shape)
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
