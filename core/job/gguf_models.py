"""A GGUF teacher before compute: where its file is, what its vocabulary and quantization are,
its fingerprint, and its own tokenizer. Metadata only (``gguf``'s reader memory-maps the file);
the weights are llama.cpp's to load, in the teacher worker (``core/teacher/gguf.py``)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from distillq.core.job import ollama
from distillq.errors import ModelError

HEAD_BYTES = 1 << 20
"""Bytes of the file hashed into its fingerprint with its size: the header and the start of
the metadata (a tag's digest is used instead where Ollama named the blob by it)."""


@dataclass(frozen=True)
class GgufInfo:
    path: Path
    tokens: list[str]
    bos: int | None
    add_bos: bool
    quantization: str
    """llama.cpp's file type, as its tools name it: f32, f16, q8_0, q4_k_m..."""
    architecture: str
    fingerprint: str


def gguf_file(ref: str) -> tuple[Path, str]:
    """The GGUF of teacher ``ref`` (a path, or an Ollama tag) and a digest naming its content
    where one is known ("" otherwise). Raises ModelError."""
    if ref.startswith(ollama.PREFIX):
        found = ollama.resolve(ref)
        return found.gguf, found.digest
    path = Path(ref).expanduser()
    if not path.is_file():
        raise ModelError(f"teacher model {ref!r} does not exist: no GGUF file there")
    return path, ""


def _field(reader: Any, key: str) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return None
    return f.contents()


def _quantization(reader: Any) -> str:
    import gguf

    ftype = _field(reader, "general.file_type")
    if ftype is not None:
        try:
            name = gguf.LlamaFileType(int(ftype)).name
            return name.removeprefix("MOSTLY_").removeprefix("ALL_").lower()
        except ValueError:
            pass
    # No file type in the header: the type most of the weights have.
    kinds: dict[str, int] = {}
    for t in reader.tensors:
        kinds[t.tensor_type.name] = kinds.get(t.tensor_type.name, 0) + int(t.n_elements)
    return max(kinds, key=lambda k: kinds[k]).lower() if kinds else "unknown"


@lru_cache(maxsize=4)
def read_info(ref: str) -> GgufInfo:
    """The metadata of ``ref``'s GGUF. Raises ModelError where it is not a readable GGUF."""
    import gguf

    path, digest = gguf_file(ref)
    try:
        reader = gguf.GGUFReader(path)
        tokens = [str(t) for t in _field(reader, "tokenizer.ggml.tokens") or []]
    except (ValueError, OSError, KeyError, IndexError) as e:
        raise ModelError(
            f"teacher model {ref!r} ({path}) is not a readable GGUF file ({e}); copy it again"
        ) from None
    if not tokens:
        raise ModelError(f"teacher model {ref!r} ({path}) has no tokenizer in its GGUF metadata")
    bos = _field(reader, "tokenizer.ggml.bos_token_id")
    add_bos = _field(reader, "tokenizer.ggml.add_bos_token")
    h = hashlib.sha256(f"gguf:{path.stat().st_size}:{digest}".encode())
    if not digest:
        with path.open("rb") as f:
            h.update(f.read(HEAD_BYTES))
    return GgufInfo(
        path=path,
        tokens=tokens,
        bos=int(bos) if bos is not None else None,
        add_bos=bool(add_bos) if add_bos is not None else bos is not None,
        quantization=_quantization(reader),
        architecture=str(_field(reader, "general.architecture") or ""),
        fingerprint=h.hexdigest()[:16],
    )


def check_tokenizer(info: GgufInfo, tok: Any, what: str) -> None:
    """Raise ModelError unless ``tok`` (a student's) gives every id the GGUF's token text.

    The GGUF may have more rows than the tokenizer (padding rows, as Qwen2.5 pads its vocabulary
    to a multiple of 128); those ids are never a target (``core/targets`` masks them)."""
    ours = tok.convert_ids_to_tokens(list(range(len(tok))))
    if len(info.tokens) < len(ours):
        raise ModelError(
            f"{what} has {len(ours)} tokens, the GGUF teacher {info.path.name} only "
            f"{len(info.tokens)}: they do not share a tokenizer; pick a student of the "
            "teacher's family"
        )
    for i, (a, b) in enumerate(zip(ours, info.tokens, strict=False)):
        if a != b:
            raise ModelError(
                f"{what} does not share the GGUF teacher's tokenizer: token {i} is {a!r} "
                f"there, {b!r} in {info.path.name}; pick a student of the teacher's family"
            )


@lru_cache(maxsize=2)
def load_gguf_tokenizer(ref: str) -> Any:
    """The GGUF's own tokenizer, as transformers rebuilds it from the metadata (seconds to a
    minute for a large vocabulary: kept per process)."""
    from transformers import AutoTokenizer

    path, _ = gguf_file(ref)
    try:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except (OSError, ValueError, KeyError, NotImplementedError) as e:
        raise ModelError(
            f"cannot rebuild the tokenizer of GGUF teacher {ref!r} ({e}); set teacher.tokenizer "
            "to the model's tokenizer directory".split("\n")[0]
        ) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok
