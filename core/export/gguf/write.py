"""Write a merged Hugging Face checkpoint as a GGUF file that llama.cpp and Ollama load.

Built on the ``gguf`` package (GGUFWriter, its tensor-name map and its numpy Q8_0
quantizer) with numpy only: no torch, no transformers. 2-D weights are written in the asked
type (F16, or Q8_0 where the row length is a multiple of Q8_0's block of 32, else F16);
1-D tensors (norms, biases) stay F32, as llama.cpp's converter keeps them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from distillq.core.export.gguf.arch import Arch, HParams, arch_of, permute_rows
from distillq.core.export.gguf.tensors import read_tensors
from distillq.core.export.gguf.vocab import Vocab, read_vocab
from distillq.errors import ExportError
from distillq.storage.atomic import atomic_path

log = logging.getLogger(__name__)

Quant = Literal["f16", "q8_0", "f32"]
QUANTS: tuple[Quant, ...] = ("f16", "q8_0")
"""What export writes by default; ``f32`` (no rounding at all) is there for exact
comparisons, such as a served teacher checked against the same model in transformers."""
WRITABLE: tuple[Quant, ...] = (*QUANTS, "f32")


def _tensor_data(arr: np.ndarray, quant: Quant) -> tuple[np.ndarray, object | None]:
    """(data, raw GGML type or None) of one tensor in the file's type."""
    import gguf

    if arr.ndim == 1 or quant == "f32":
        return np.ascontiguousarray(arr, dtype=np.float32), None
    if quant == "q8_0" and arr.shape[-1] % 32 == 0:
        qtype = gguf.GGMLQuantizationType.Q8_0
        return gguf.quants.quantize(np.asarray(arr, dtype=np.float32), qtype), qtype
    return np.ascontiguousarray(arr, dtype=np.float16), None


def _add_vocab(w: object, v: Vocab) -> None:
    w.add_tokenizer_model("gpt2")  # type: ignore[attr-defined]
    w.add_tokenizer_pre(v.pre)  # type: ignore[attr-defined]
    w.add_token_list(v.tokens)  # type: ignore[attr-defined]
    w.add_token_types(v.types)  # type: ignore[attr-defined]
    w.add_token_merges(v.merges)  # type: ignore[attr-defined]
    for add, value in (
        ("add_bos_token_id", v.bos),
        ("add_eos_token_id", v.eos),
        ("add_pad_token_id", v.pad),
    ):
        if value is not None:
            getattr(w, add)(value)
    w.add_add_bos_token(v.add_bos)  # type: ignore[attr-defined]
    if v.chat_template:
        w.add_chat_template(v.chat_template)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Source:
    """What a conversion reads from a checkpoint besides its tensors, read once per export."""

    model_dir: Path
    arch: Arch
    hp: HParams
    vocab: Vocab

    @staticmethod
    def read(model_dir: Path) -> Source:
        """Raises ExportError naming what is unsupported (architecture, rope, tokenizer)."""
        config = json.loads((model_dir / "config.json").read_text())
        hp = HParams.from_config(config)
        return Source(model_dir, arch_of(config), hp, read_vocab(model_dir, hp.vocab_size))


def write_gguf(model_dir: Path | Source, out: Path, quant: Quant = "f16", name: str = "") -> Path:
    """Convert the checkpoint in ``model_dir`` to ``out`` (written atomically). Raises
    ExportError naming what is unsupported (architecture, rope, tokenizer)."""
    import gguf

    if quant not in WRITABLE:
        raise ExportError(f"quant {quant!r} is not supported: choose one of {', '.join(WRITABLE)}")
    src = model_dir if isinstance(model_dir, Source) else Source.read(model_dir)
    model_dir, arch, hp, vocab = src.model_dir, src.arch, src.hp, src.vocab
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.gguf_name.upper()], hp.layers)

    with atomic_path(out) as tmp:
        w = gguf.GGUFWriter(tmp, arch.gguf_name)
        w.add_name(name or model_dir.name)
        w.add_vocab_size(len(vocab.tokens))
        w.add_context_length(hp.context)
        w.add_embedding_length(hp.hidden)
        w.add_block_count(hp.layers)
        w.add_feed_forward_length(hp.intermediate)
        w.add_head_count(hp.heads)
        w.add_head_count_kv(hp.kv_heads)
        w.add_key_length(hp.head_dim)
        w.add_value_length(hp.head_dim)
        w.add_rope_dimension_count(hp.head_dim)
        w.add_rope_freq_base(hp.rope_theta)
        w.add_layer_norm_rms_eps(hp.rms_eps)
        w.add_file_type(
            {
                "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                "f32": gguf.LlamaFileType.ALL_F32,
            }.get(quant, gguf.LlamaFileType.MOSTLY_F16)
        )
        _add_vocab(w, vocab)
        seen = set()
        for key, arr in read_tensors(model_dir):
            if key.endswith("rotary_emb.inv_freq") or (hp.tied and key == "lm_head.weight"):
                continue  # recomputed by llama.cpp / shared with token_embd
            base, _, suffix = key.rpartition(".")
            mapped = names.get_name(base)
            if mapped is None:
                raise ExportError(
                    f"GGUF export: tensor {key} of {arch.gguf_name} has no llama.cpp name"
                )
            if arch.permute_qk and base.endswith("q_proj"):
                arr = permute_rows(arr, hp.heads)
            elif arch.permute_qk and base.endswith("k_proj"):
                arr = permute_rows(arr, hp.kv_heads)
            if mapped == "token_embd" and arr.shape[0] < len(vocab.tokens):
                raise ExportError(
                    f"embedding has {arr.shape[0]} rows but the tokenizer has {len(vocab.tokens)} tokens"
                )
            data, raw = _tensor_data(arr, quant)
            name_out = f"{mapped}.{suffix}"
            # A quantized tensor comes as bytes; the writer derives its shape from raw_dtype.
            w.add_tensor(name_out, data, raw_dtype=raw)  # type: ignore[arg-type]
            seen.add(name_out)
        if "token_embd.weight" not in seen:
            raise ExportError(f"{model_dir}: no token embedding found; is it a causal LM?")
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    log.info("wrote %s (%s, %.1f MB)", out, quant, out.stat().st_size / 1e6)
    return out
