"""Datasets as users keep them, read as a stream of records.

    JSONL              plain, gzip (.gz) or zstd (.zst) compressed
    Parquet            one file, or a directory of them (read a row group at a time)
    save_to_disk       a directory ``datasets.Dataset.save_to_disk`` wrote (Arrow stream files)

Every format yields the same records (``core.data``'s three shapes), after ``columns`` maps the
user's column names onto ours (``{prompt: instruction, response: output}``) and ShareGPT's
``conversations: [{from, value}]`` becomes ``messages``. Memory stays flat: one line, or one
record batch, at a time. Plain JSONL with no mapping is not read here at all: the job copies it
byte for byte, as it always did.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from distillq.errors import DataError

FIELDS = ("text", "prompt", "response", "messages")
_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}

Located = tuple[str, Any]
"""(where: "file row N" for messages, record or the DataError that row raised)."""


def kind(path: Path) -> str:
    """``jsonl``, ``jsonl.gz``, ``jsonl.zst``, ``parquet``, ``parquet-dir`` or ``arrow-dir``."""
    if path.is_dir():
        if (path / "dataset_dict.json").exists():
            splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
            raise DataError(
                f"dataset {path} is a DatasetDict with splits {splits}: point 'dataset' at one "
                f"split's directory, e.g. {path / (splits[0] if splits else 'train')}"
            )
        if (path / "state.json").exists() and (path / "dataset_info.json").exists():
            return "arrow-dir"
        if any(path.rglob("*.parquet")):
            return "parquet-dir"
        raise DataError(
            f"dataset directory {path} holds no Parquet files and no save_to_disk dataset "
            "(state.json + dataset_info.json); point 'dataset' at a JSONL or Parquet file"
        )
    try:
        with path.open("rb") as f:
            head = f.read(8192)
    except FileNotFoundError:
        raise DataError(f"dataset {path} does not exist; check the 'dataset' path") from None
    magic = head[:4]
    if magic[:2] == b"\x1f\x8b":
        return "jsonl.gz"
    if magic == b"\x28\xb5\x2f\xfd":
        return "jsonl.zst"
    if magic == b"PAR1":
        return "parquet"
    if b"\x00" in head:  # no text encoding distillq reads has NUL bytes
        raise DataError(
            f"dataset {path} is not text (a binary file?): point 'dataset' at a JSONL file "
            "(plain, .gz or .zst), a Parquet file or a save_to_disk directory"
        )
    return "jsonl"


def to_record(row: Any, columns: dict[str, str]) -> Any:
    """A source row as one of our record shapes: ``columns`` renamed, ShareGPT turns mapped."""
    if not isinstance(row, dict):
        return row
    rec = dict(row)
    for ours, theirs in columns.items():
        if theirs not in rec:
            have = ", ".join(list(rec)[:8])
            raise DataError(f"has no column {theirs!r} (columns.{ours}); its columns: {have}")
        rec[ours] = rec.pop(theirs)
    if "messages" not in rec and "conversations" in rec and not set(FIELDS) & set(rec):
        rec["messages"] = rec.pop("conversations")
    msgs = rec.get("messages")
    if isinstance(msgs, list) and msgs and all(isinstance(m, dict) and "from" in m for m in msgs):
        rec["messages"] = [
            {"role": _SHAREGPT_ROLES.get(m["from"], m["from"]), "content": m.get("value")}
            for m in msgs
        ]
    # Only the fields a shape uses: Arrow fills absent columns of a row with None.
    return {k: v for k, v in rec.items() if k in FIELDS and v is not None}


def _decompressed(path: Path, compression: str) -> Any:
    if compression == "gz":
        return gzip.open(path, "rb")
    import zstandard

    return zstandard.ZstdDecompressor().stream_reader(path.open("rb"), closefd=True)


def _text_lines(path: Path, compression: str) -> Iterator[tuple[str, Any]]:
    with io.TextIOWrapper(_decompressed(path, compression), encoding="utf-8") as f:
        lineno = 0
        try:
            for lineno, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        yield f"{path.name} line {lineno}", json.loads(line)
                    except json.JSONDecodeError as e:
                        yield f"{path.name} line {lineno}", DataError(f"not valid JSON ({e.msg})")
        except UnicodeDecodeError:
            yield f"{path.name} line {lineno + 1}", DataError("not UTF-8; re-encode the file")


def _parquet_rows(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    row = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=512):
        for rec in batch.to_pylist():
            row += 1
            yield f"{path.name} row {row}", rec


def _arrow_rows(directory: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow as pa

    state = json.loads((directory / "state.json").read_text())
    for entry in state.get("_data_files", []):
        path = directory / entry["filename"]
        row = 0
        with pa.memory_map(str(path)) as source:
            for batch in pa.ipc.open_stream(source):
                for rec in batch.to_pylist():
                    row += 1
                    yield f"{path.name} row {row}", rec


def rows(path: Path) -> Iterator[tuple[str, Any]]:
    """``(where, row)`` of every row of the dataset at ``path``, in order."""
    k = kind(path)
    if k == "jsonl":
        with path.open("rb") as f:
            for lineno, raw in enumerate(f, start=1):
                if raw.strip():
                    try:
                        yield f"{path.name} line {lineno}", json.loads(raw.decode("utf-8"))
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        yield f"{path.name} line {lineno}", DataError("not valid UTF-8 JSON")
    elif k in ("jsonl.gz", "jsonl.zst"):
        yield from _text_lines(path, k.rpartition(".")[2])
    elif k == "parquet":
        yield from _parquet_rows(path)
    elif k == "parquet-dir":
        for part in sorted(path.rglob("*.parquet")):
            yield from _parquet_rows(part)
    else:
        yield from _arrow_rows(path)


def records(path: Path, columns: dict[str, str]) -> Iterator[Located]:
    """``(where, record or DataError)`` for every row: mapped, not yet shape-checked."""
    for where, row in rows(path):
        if isinstance(row, DataError):
            yield where, row
            continue
        try:
            yield where, to_record(row, columns)
        except DataError as e:
            yield where, e
