"""A Hugging Face fast tokenizer (``tokenizer.json``) as llama.cpp's GGUF vocabulary.

Byte-level BPE only (GPT-2, Qwen2, Llama 3 and this project's own tokenizers): tokens are
written as they appear in ``tokenizer.json`` (byte-level encoded, e.g. ``Ġthe``), merges as
``"a b"`` strings, and the pre-tokenizer by the name llama.cpp knows it under. llama.cpp's
own converter identifies the pre-tokenizer by hashing how a test string tokenizes and refuses
hashes it has not seen (this project's tokenizers among them); here it is read from the
pre-tokenizer's own definition, and one llama.cpp does not implement is refused by name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distillq.errors import ExportError

# llama.cpp token types (gguf.TokenType)
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5

# The split regexes of tokenizers llama.cpp implements, by its pre-tokenizer name.
_QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLITS = {_QWEN2: "qwen2", _LLAMA3: "llama-bpe"}


@dataclass(frozen=True)
class Vocab:
    tokens: list[str]
    types: list[int]
    merges: list[str]
    pre: str
    """llama.cpp's pre-tokenizer name (``tokenizer.ggml.pre``)."""
    bos: int | None
    eos: int | None
    pad: int | None
    add_bos: bool
    chat_template: str | None
    special: dict[int, str]
    """Control tokens by id (stop tokens for the Modelfile come from here)."""


def _pre_name(pre: dict[str, Any] | None) -> str:
    if pre and pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"  # ByteLevel's own regex is GPT-2's (llama.cpp spells it with a hyphen)
    if pre and pre.get("type") == "Sequence":
        steps = pre.get("pretokenizers", [])
        split = next((s for s in steps if s.get("type") == "Split"), None)
        byte_level = any(s.get("type") == "ByteLevel" for s in steps)
        regex = (split or {}).get("pattern", {}).get("Regex")
        if byte_level and regex in _SPLITS:
            return _SPLITS[regex]
    kind = (pre or {}).get("type", "none")
    raise ExportError(
        f"GGUF export does not know the tokenizer's pre-tokenizer ({kind}); supported: "
        "byte-level BPE as GPT-2, Qwen2 and Llama 3 define it"
    )


def chat_template(model_dir: Path, tok_config: dict[str, Any]) -> str | None:
    """The Jinja chat template: ``chat_template.jinja`` (transformers 5) or the config's."""
    jinja = model_dir / "chat_template.jinja"
    if jinja.exists():
        return jinja.read_text()
    tpl = tok_config.get("chat_template")
    if isinstance(tpl, list):  # named templates: the default one
        tpl = next((t["template"] for t in tpl if t.get("name") == "default"), None)
    return tpl if isinstance(tpl, str) else None


def read_vocab(model_dir: Path, vocab_size: int) -> Vocab:
    """The GGUF vocabulary of the tokenizer saved in ``model_dir``, padded to ``vocab_size``
    rows (models often have more embedding rows than tokens; the extra ones are UNUSED)."""
    path = model_dir / "tokenizer.json"
    if not path.exists():
        raise ExportError(
            f"{model_dir} has no tokenizer.json: GGUF export needs a fast (tokenizers) tokenizer"
        )
    tj = json.loads(path.read_text())
    model = tj.get("model", {})
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise ExportError(
            f"GGUF export supports byte-level BPE tokenizers, not {model.get('type')}"
            f"{' with byte fallback (SentencePiece style)' if model.get('byte_fallback') else ''}"
        )
    pre = _pre_name(tj.get("pre_tokenizer"))
    by_id: dict[int, str] = {i: t for t, i in model["vocab"].items()}
    types = {i: NORMAL for i in by_id}
    special: dict[int, str] = {}
    for added in tj.get("added_tokens", []):
        by_id[added["id"]] = added["content"]
        types[added["id"]] = CONTROL if added.get("special") else USER_DEFINED
        if added.get("special"):
            special[added["id"]] = added["content"]
    n = max(vocab_size, max(by_id) + 1)
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(n)]
    tok_types = [types.get(i, UNUSED) for i in range(n)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]

    cfg_path = model_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    ids = {t: i for i, t in enumerate(tokens)}

    def token_id(key: str) -> int | None:
        value = cfg.get(key)
        if isinstance(value, dict):  # older configs: an AddedToken mapping
            value = value.get("content")
        return ids.get(value) if isinstance(value, str) else None

    post = json.dumps(tj.get("post_processor") or {})
    bos = token_id("bos_token")
    return Vocab(
        tokens=tokens,
        types=tok_types,
        merges=merges,
        pre=pre,
        bos=bos,
        eos=token_id("eos_token"),
        pad=token_id("pad_token"),
        # The tokenizer adds BOS itself only where its post-processor says so.
        add_bos=bool(cfg.get("add_bos_token"))
        or (bos is not None and f'"{tokens[bos]}"' in post and '"special_tokens": {}' not in post),
        chat_template=chat_template(model_dir, cfg),
        special=special,
    )
