"""GGUF export for llama.cpp and Ollama: a merged safetensors checkpoint → ``.gguf`` files and
an Ollama ``Modelfile``, with numpy and the ``gguf`` package only (no torch at conversion).

    write.py      the converter (GGUFWriter, tensor names, q/k reordering, quantization)
    arch.py       supported architectures (Llama, Qwen2) and their shapes
    vocab.py      tokenizer.json → GGUF vocabulary (byte-level BPE)
    tensors.py    safetensors → numpy (bf16 included)
    modelfile.py  the Ollama Modelfile (template from the chat template, stop tokens)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from distillq.core.export.gguf.modelfile import write_modelfile
from distillq.core.export.gguf.write import QUANTS, Quant, Source, write_gguf

__all__ = ["QUANTS", "GgufFiles", "Quant", "export_gguf", "write_gguf"]


@dataclass(frozen=True)
class GgufFiles:
    files: dict[str, str]
    """Quant name → path of its .gguf file."""
    modelfile: str


def export_gguf(
    merged: Path, out_dir: Path, stem: str, quants: tuple[Quant, ...] = QUANTS
) -> GgufFiles:
    """``out_dir/<stem>-<quant>.gguf`` for each quant, and ``out_dir/Modelfile`` pointing at
    the first of them. Raises ExportError (one line) for what cannot be converted."""
    src = Source.read(merged)
    files: dict[str, str] = {
        q: str(write_gguf(src, out_dir / f"{stem}-{q}.gguf", q, name=stem)) for q in quants
    }
    first = Path(files[quants[0]]).name
    modelfile = write_modelfile(out_dir / "Modelfile", first, src.vocab, src.hp.context)
    return GgufFiles(files=files, modelfile=str(modelfile))
