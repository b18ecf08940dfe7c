"""Teacher cache shards: HDF5 files in the ``distillq.teacher/3`` format (docs/DESIGN.md).

| dataset               | dtype         | shape  | meaning                                       |
|-----------------------|---------------|--------|-----------------------------------------------|
| input_ids             | int32         | [T]    | token ids of all samples, concatenated        |
| sample_offsets        | int64         | [n+1]  | sample j spans input_ids[o[j]:o[j+1]]         |
| record_ids            | int64         | [n]    | dataset record of each sample                 |
| target_positions      | int64         | [P]    | positions (into input_ids) that carry targets |
| target_ids            | uint16/int32  | [P, k] | teacher token ids                             |
| target_logprobs_delta | uint16        | [P, k] | teacher log-probs at τ (full-vocab            |
|                       |               |        | normalised), float16, delta-coded per row     |

Optional, where the teacher wrote responses (``teacher.generate``):

| dataset        | dtype  | shape | meaning                                                  |
|----------------|--------|-------|----------------------------------------------------------|
| sample_kind    | uint8  | [n]   | 0 scored given text, 1 generated with the teacher's      |
|                |        |       | top-k, 2 generated text only (CE on the teacher's text)  |
| generated_text | vlen   | [n]   | the response the teacher wrote, UTF-8 bytes ("" where it |
|                | uint8  |       | scored): ``bytes(f["generated_text"][j]).decode()``      |

A target method (``core/targets/``) may add per-position datasets of its own (``Column``) and
attributes; the writer and reader here only store them. With sampled targets
(``target_method = "sampled"``, format 3; ``core/targets/sampled.py``), the k
columns hold the unique ids drawn at a position (k = the draws N), sorted by log-prob, with:

| dataset          | dtype   | shape  | meaning                                               |
|------------------|---------|--------|-------------------------------------------------------|
| target_counts    | uint8   | [P, N] | times each id was drawn (0: an empty slot, id 0,      |
|                  |         |        | log-prob −inf); the counts of a row sum to N          |
| proposal_offset  | float32 | [P]    | only where draws came from a proposal q ∝ p^r:        |
|                  |         |        | log q = r·log p + offset (importance weight p / q)    |

and the attributes ``samples`` (N), ``proposal_temperature``, ``sample_seed`` and ``sampler``
(how uniforms became tokens). The method turns them into weights count / N · p / q
(``core/targets/shard.py``: ``Batch.target_weights``): unbiased estimates of the teacher's
probabilities.

Slots a server could not fill hold log-prob −inf (the loss leaves them in the tail); a
position with no teacher distribution at all holds its own next token at log-prob 0 (KD on
a one-hot teacher is CE). The attribute ``target_source`` says where targets came from.

``target_logprobs_delta`` holds each row's float16 bit patterns as differences (mod 2**16)
from the previous column: ``np.cumsum(d, axis=1, dtype=np.uint16).view(np.float16)`` gives
the log-probs back bit for bit, in the order they were written. Top-k rows come sorted
descending; negative float16 bit patterns then ascend, so the differences are small and
gzip packs a log-prob into ~6.5 bits instead of ~9 (bench/NOTES.md). Formats
``distillq.teacher/1`` (plain float16 ``target_logprobs``) and ``/2`` (top-k only, the same
layout as a top-k shard of format 3) are still read.

Writing streams into resizable, chunked, shuffle+gzip datasets a whole chunk at a time; the file
appears under its final name only when complete, and a sidecar JSON (``ShardStats``: file
sha256, size, counts) written after it is what marks the shard as done. Training checks the
file against that sha256 before it reads a shard (``verified``). Files written before this
version also carry a per-dataset ``sha256`` attribute; nothing reads it (the file's own hash
covers every dataset). Readers slice
targets per batch, so memory stays flat however large a shard is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from distillq.errors import CacheError
from distillq.storage import records
from distillq.storage.atomic import atomic_path
from distillq.storage.records import ShardStats

if TYPE_CHECKING:
    import h5py

# h5py is imported where a shard is opened: `status`, `enqueue` and the canvas read only the
# JSON sidecars through this module, and h5py costs them a few tenths of a second.

FORMAT = "distillq.teacher/3"
READABLE_FORMATS = ("distillq.teacher/1", "distillq.teacher/2", FORMAT)
CHUNK_ROWS = 1024
_COMPRESSION: dict[str, Any] = {"compression": "gzip", "compression_opts": 4, "shuffle": True}


def id_dtype(vocab_size: int) -> np.dtype:
    """Smallest dtype that holds every token id of the vocabulary."""
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.int32)


def encode_logprobs(logprobs: np.ndarray) -> np.ndarray:
    """[P, k] log-probs → [P, k] uint16: float16 bits, each column minus the previous (mod 2**16)."""
    bits = np.ascontiguousarray(logprobs, dtype=np.float16).view(np.uint16)
    out = bits.copy()
    out[:, 1:] -= bits[:, :-1]  # uint16 arithmetic wraps: lossless for any values and order
    return out


def decode_logprobs(deltas: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode_logprobs`: [P, k] uint16 → [P, k] float16, bit for bit."""
    return np.cumsum(deltas, axis=1, dtype=np.uint16).view(np.float16)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class _Appender:
    """A 1-D or 2-D dataset that grows along axis 0."""

    def __init__(self, f: h5py.File, name: str, dtype: np.dtype, width: int | None) -> None:
        shape = (0,) if width is None else (0, width)
        maxshape = (None,) if width is None else (None, width)
        chunks = (CHUNK_ROWS * 16,) if width is None else (CHUNK_ROWS, max(width, 1))
        self.dtype, self.n = dtype, 0
        self._pending: list[np.ndarray] = []
        self._written = 0
        if width == 0:
            # No teacher (data_parallel): the target datasets exist, empty, for the format's sake.
            self.ds = f.create_dataset(name, shape=(0, 0), dtype=dtype)
            return
        self.ds = f.create_dataset(
            name, shape=shape, maxshape=maxshape, dtype=dtype, chunks=chunks, **_COMPRESSION
        )

    def append(self, values: np.ndarray) -> None:
        # Buffered to whole chunks: a resize + write per sample cost the teacher task ~7% of
        # its time in h5py's Python layer on a small model (bench/NOTES.md).
        values = np.ascontiguousarray(values, dtype=self.dtype)
        if len(values) == 0:
            return
        self._pending.append(values)
        self.n += len(values)
        if self.n - self._written >= CHUNK_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        values = np.concatenate(self._pending)
        self._pending = []
        self.ds.resize(self.n, axis=0)
        self.ds[self._written : self.n] = values
        self._written = self.n


@dataclass(frozen=True)
class Column:
    """A per-position dataset a target method adds to a shard, beside ids and log-probs."""

    name: str
    dtype: str
    """A numpy dtype name (``uint8``, ``float32``)."""
    wide: bool
    """[P, width] when True, [P] when False."""


@dataclass
class ShardMeta:
    """What a shard was made from; written as HDF5 attributes and checked by readers."""

    shard: int
    vocab_size: int
    width: int
    """Columns of the target datasets: k kept, or N draws (the attribute ``k``); 0 without a
    teacher."""
    temperature: float
    teacher_fingerprint: str
    tokenizer_fingerprint: str
    record_range: tuple[int, int]
    source: str = "local"
    method: str = "topk"
    """The ``target_method`` attribute: the name of the method that made the targets."""
    method_attrs: dict[str, int | float | str] = field(default_factory=dict)
    """Attributes the method needs to read its targets back (``samples``, ``sample_seed``...)."""
    columns: tuple[Column, ...] = ()
    """Per-position datasets the method adds (``target_counts``...)."""


class CacheWriter:
    """Stream samples and their sparse teacher targets into one shard file, atomically.

    Use as a context manager; the file is committed on a clean exit and discarded otherwise.
    """

    def __init__(self, path: Path, meta: ShardMeta) -> None:
        self.path = path
        self.meta = meta
        self._ctx = atomic_path(path)

    def __enter__(self) -> CacheWriter:
        self._tmp = self._ctx.__enter__()
        import h5py

        self._f = h5py.File(self._tmp, "w")
        k = self.meta.width
        self._input_ids = _Appender(self._f, "input_ids", np.dtype(np.int32), None)
        self._record_ids = _Appender(self._f, "record_ids", np.dtype(np.int64), None)
        self._positions = _Appender(self._f, "target_positions", np.dtype(np.int64), None)
        self._ids = _Appender(self._f, "target_ids", id_dtype(self.meta.vocab_size), k)
        self._logprobs = _Appender(self._f, "target_logprobs_delta", np.dtype(np.uint16), k)
        self._columns = {
            c.name: _Appender(self._f, c.name, np.dtype(c.dtype), k if c.wide else None)
            for c in self.meta.columns
        }
        self._extra: list[_Appender] = [self._ids, self._logprobs, *self._columns.values()]
        self._offsets = [0]
        self._texts: list[str] = []
        self._kinds: list[int] = []
        return self

    def add(
        self,
        record_id: int,
        input_ids: np.ndarray,
        positions: np.ndarray,
        target_ids: np.ndarray | None,
        target_logprobs: np.ndarray | None,
        text: str = "",
        kind: int = 0,
        columns: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Append one sample: ids [L], positions [P_j] (within the sample), targets [P_j, k];
        ``text``/``kind``: the response the teacher wrote and what its targets are;
        ``columns``: the values of the method's own datasets (``ShardMeta.columns``)."""
        self._texts.append(text)
        self._kinds.append(kind)
        base = self._offsets[-1]
        self._input_ids.append(input_ids)
        self._record_ids.append(np.asarray([record_id]))
        self._positions.append(np.asarray(positions, dtype=np.int64) + base)
        if self.meta.width:
            assert target_ids is not None and target_logprobs is not None
            self._ids.append(target_ids)
            self._logprobs.append(encode_logprobs(target_logprobs))
        for name, appender in self._columns.items():
            if columns is None or name not in columns:
                raise ValueError(f"a {self.meta.method} shard needs {name} for every sample")
            appender.append(columns[name])
        self._offsets.append(base + len(input_ids))

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is None:
                for appender in (self._input_ids, self._record_ids, self._positions, *self._extra):
                    appender.flush()
                offsets = np.asarray(self._offsets, dtype=np.int64)
                self._f.create_dataset("sample_offsets", data=offsets, **_COMPRESSION)
                if any(self._kinds):
                    import h5py

                    kinds = np.asarray(self._kinds, dtype=np.uint8)
                    self._f.create_dataset("sample_kind", data=kinds, **_COMPRESSION)
                    # UTF-8 bytes, not an HDF5 string: a model may write NUL, which HDF5
                    # strings cannot hold.
                    text = self._f.create_dataset(
                        "generated_text", (len(self._texts),), dtype=h5py.vlen_dtype(np.uint8)
                    )
                    for i, t in enumerate(self._texts):
                        text[i] = np.frombuffer(t.encode(), dtype=np.uint8)
                m = self.meta
                attrs = {
                    "format": FORMAT,
                    "shard": m.shard,
                    "vocab_size": m.vocab_size,
                    "k": m.width,
                    "temperature": m.temperature,
                    "target_method": m.method,
                    "target_source": m.source,
                    "teacher_fingerprint": m.teacher_fingerprint,
                    "tokenizer_fingerprint": m.tokenizer_fingerprint,
                    "record_range": list(m.record_range),
                    **m.method_attrs,
                }
                self._f.attrs.update(attrs)
            self._f.close()
        except BaseException as e:
            # Failing while finishing (a full disk usually shows up here, when HDF5 flushes its
            # chunk cache): the temporary file must be discarded, not committed.
            with contextlib.suppress(Exception):
                self._f.close()
            self._ctx.__exit__(type(e), e, e.__traceback__)
            raise
        self._ctx.__exit__(exc_type, exc, tb)

    @property
    def counts(self) -> dict[str, int]:
        return {
            "samples": len(self._offsets) - 1,
            "tokens": self._offsets[-1],
            "target_positions": self._positions.n,
        }


def write_stats(path: Path, shard_file: Path, stats: ShardStats) -> ShardStats:
    """Write the sidecar that marks a shard as done: ``stats`` with the file's sha256 and size."""
    record = dataclasses.replace(
        stats, sha256=file_sha256(shard_file), bytes=shard_file.stat().st_size
    )
    records.write(path, record)
    return record


def read_stats(path: Path) -> ShardStats:
    return records.read(ShardStats, path)


# path -> (mtime_ns, size, finished_at) of sidecars this process has read
_FINISHED: dict[Path, tuple[int, int, float]] = {}


def finished_at(path: Path) -> float | None:
    """When the shard of sidecar ``path`` finished, or None if it has not.

    The scheduler asks for every shard at every round; reading 1,000 sidecars each time made
    the gap between a merge and the next round grow with the job (bench/scale.py). A sidecar
    changes only when its shard is written again, so one read per (mtime, size) is enough.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    known = _FINISHED.get(path)
    if known is not None and known[:2] == (st.st_mtime_ns, st.st_size):
        return known[2]
    when = read_stats(path).finished_at
    _FINISHED[path] = (st.st_mtime_ns, st.st_size, when)
    return when


def verified(shard_file: Path, stats_file: Path) -> ShardStats | None:
    """The sidecar record if the shard file exists and matches it, else None."""
    if not (shard_file.exists() and stats_file.exists()):
        return None
    try:
        record = read_stats(stats_file)
    except (OSError, ValueError, CacheError):
        return None
    if record.bytes != shard_file.stat().st_size or record.sha256 != file_sha256(shard_file):
        return None
    return record


class CacheReader:
    """Read a shard: small index arrays in memory, teacher targets sliced per batch."""

    def __init__(self, path: Path) -> None:
        import h5py

        try:
            self._f = h5py.File(path, "r")
        except (OSError, FileNotFoundError) as e:
            raise CacheError(
                f"teacher cache {path} cannot be opened ({e}); delete it and resume the job"
            ) from None
        if self._f.attrs.get("format") not in READABLE_FORMATS:
            raise CacheError(f"teacher cache {path} is not in format {FORMAT}; regenerate it")
        self.path = path
        self.attrs = dict(self._f.attrs)
        self.input_ids = self._f["input_ids"][:]
        self.offsets = self._f["sample_offsets"][:]
        self.positions = self._f["target_positions"][:]
        self.k = int(self.attrs["k"])

    def __enter__(self) -> CacheReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._f.close()

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def generated(self, j: int) -> tuple[int, str]:
        """(kind, text) of sample j: what ``CacheWriter.add`` was given (0, "" when scored)."""
        if "sample_kind" not in self._f:
            return 0, ""
        text = self._f["generated_text"][j]  # vlen uint8: the UTF-8 bytes as an array
        return int(self._f["sample_kind"][j]), bytes(np.asarray(text, dtype=np.uint8)).decode()

    def record_id(self, j: int) -> int:
        return int(self._f["record_ids"][j])

    def record_ids(self) -> np.ndarray:
        return np.asarray(self._f["record_ids"][:])

    def sample_ids(self, j: int) -> np.ndarray:
        return self.input_ids[self.offsets[j] : self.offsets[j + 1]]

    def spans(self, samples: np.ndarray) -> list[tuple[int, int]]:
        """[p0, p1) ranges of target positions of ``samples`` (ascending), merged where they
        touch: one slice per run of consecutive samples."""
        lo = self.offsets[samples]
        hi = self.offsets[samples + 1]
        p0 = np.searchsorted(self.positions, lo)
        p1 = np.searchsorted(self.positions, hi)
        out: list[tuple[int, int]] = []
        for a, b in zip(p0.tolist(), p1.tolist(), strict=True):
            if out and out[-1][1] == a:
                out[-1] = (out[-1][0], b)
            else:
                out.append((a, b))
        return out

    def positions_of(self, j: int) -> np.ndarray:
        """Target positions of sample j, within the sample."""
        lo, hi = self.offsets[j], self.offsets[j + 1]
        p0, p1 = np.searchsorted(self.positions, [lo, hi])
        return self.positions[p0:p1] - lo

    def rows(self, name: str, spans: list[tuple[int, int]]) -> np.ndarray:
        """Rows ``spans`` of a per-position dataset, in order."""
        return np.concatenate([self._f[name][p0:p1] for p0, p1 in spans])

    def logprobs(self, spans: list[tuple[int, int]]) -> np.ndarray:
        """Teacher log-probs of the target positions in ``spans`` as float16 [P, k]."""
        return np.concatenate([self._logprobs(p0, p1) for p0, p1 in spans])

    def _logprobs(self, p0: int, p1: int) -> np.ndarray:
        if "target_logprobs_delta" in self._f:
            return decode_logprobs(self._f["target_logprobs_delta"][p0:p1])
        return np.asarray(self._f["target_logprobs"][p0:p1])  # distillq.teacher/1

    def lengths(self, samples: range | np.ndarray) -> np.ndarray:
        """Token counts of ``samples``."""
        idx = np.asarray(samples, dtype=np.int64)
        return self.offsets[idx + 1] - self.offsets[idx]
