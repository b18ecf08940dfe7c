"""Read a Hugging Face checkpoint's safetensors as numpy arrays, with no torch.

The format is an 8-byte little-endian header length, a JSON header (name → dtype, shape,
byte offsets) and the raw tensor bytes. It is read here directly rather than through
``safetensors.numpy``, because numpy has no bfloat16 and that loader refuses bf16 files,
which is how GPU-trained checkpoints are usually saved. bf16 is widened to float32 exactly
(its bits are the top half of a float32).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from distillq.errors import ExportError

_DTYPES = {
    "F32": np.float32,
    "F16": np.float16,
    "F64": np.float64,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def weight_files(model_dir: Path) -> list[Path]:
    """The checkpoint's safetensors files: one, or the shards its index names."""
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_dir / n for n in names]
    single = model_dir / "model.safetensors"
    if single.exists():
        return [single]
    raise ExportError(
        f"{model_dir} has no model.safetensors (nor an index of shards): "
        "GGUF export reads safetensors; re-save the model with safe_serialization=True"
    )


def _read_file(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        raw = data[start:end]
        shape = tuple(info["shape"])
        if info["dtype"] == "BF16":
            wide = raw.view("<u2").astype(np.uint32) << 16
            yield name, wide.view(np.float32).reshape(shape)
        elif info["dtype"] in _DTYPES:
            yield name, raw.view(np.dtype(_DTYPES[info["dtype"]]).newbyteorder("<")).reshape(shape)
        else:
            raise ExportError(f"{path}: tensor {name} has dtype {info['dtype']}, not readable here")


def read_tensors(model_dir: Path) -> Iterator[tuple[str, np.ndarray]]:
    """``(name, array)`` of every tensor of the checkpoint in ``model_dir`` (memory-mapped)."""
    for path in weight_files(model_dir):
        yield from _read_file(path)
