"""JSONL records → tokenized samples with a training mask; the deterministic split into shards.

Three record shapes (docs/DESIGN.md §5: only "next token is a training target" positions get targets):

- ``{"prompt": ..., "response": ...}``: train on the response tokens (+ EOS).
- ``{"text": ...}``: train on every token (+ EOS).
- ``{"messages": [{"role", "content"}, ...]}``: the tokenizer's chat template where it has
  one, else the plain template ``"<|{role}|>\\n{content}\\n"`` per turn (EOS at the end);
  train on the assistant turns only.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from distillq.core.job import sources
from distillq.core.maths.batching import Padded, pad
from distillq.errors import DataError

Segment = tuple[str, bool]  # (text, is training target)
ACCEPTED_SHAPES = (
    '{"text": ...}, {"prompt": ..., "response": ...} or '
    '{"messages": [{"role": ..., "content": ...}, ...]}'
)


class RenderChat(Protocol):
    """Renders messages with the tokenizer's chat template (``apply_chat_template``)."""

    def __call__(self, msgs: list[dict[str, str]], add_generation_prompt: bool) -> str: ...


SKIP_HINT = "; fix or remove the line, or enqueue with --skip-bad-lines"
MAX_RECORD_BYTES = 2**20
"""One record's limit: a megabyte of text is some 250k tokens, beyond any max_length, and
every teacher and student task would read and tokenize all of it to keep a few KB."""


def check_size(size: int, where: str) -> None:
    if size > MAX_RECORD_BYTES:
        raise DataError(
            f"{where} is {size / 2**20:.1f} MB, over the {MAX_RECORD_BYTES // 2**20} MB limit for "
            "one record: split it into records of a few KB"
        )


@dataclass
class Sample:
    record_id: int
    input_ids: list[int]
    target_mask: list[bool]
    """``target_mask[t]``: token t is a training target (predicted from position t − 1)."""

    def target_positions(self) -> list[int]:
        """Positions whose *next* token is a target: where a loss (and teacher targets) apply."""
        return [t - 1 for t in range(1, len(self.input_ids)) if self.target_mask[t]]


@dataclass
class TokenizeStats:
    samples: int = 0
    tokens: int = 0
    truncated: int = 0
    dropped_no_target: int = 0


# ---------------------------------------------------------------- records


def record_segments(
    record: Any, has_chat_template: bool, render_chat: RenderChat | None = None
) -> list[Segment]:
    """The text pieces of one record and whether each is trained on. Raises DataError."""
    if not isinstance(record, dict):
        raise DataError(
            f"record is a JSON {type(record).__name__}, not an object; accepted shapes: {ACCEPTED_SHAPES}"
        )
    if "prompt" in record or "response" in record:
        if isinstance(record.get("prompt"), str) and "response" not in record:
            raise DataError(
                "record has a prompt and no response: add teacher.generate to the job spec "
                "so the teacher writes the responses, or add a 'response'"
            )
        if not isinstance(record.get("prompt"), str) or not isinstance(record.get("response"), str):
            raise DataError("a prompt/response record needs both 'prompt' and 'response' strings")
        return [(record["prompt"], False), (record["response"], True)]
    if "text" in record:
        if not isinstance(record["text"], str):
            raise DataError("'text' must be a string")
        return [(record["text"], True)]
    if "messages" in record:
        msgs = record["messages"]
        if (
            not isinstance(msgs, list)
            or not msgs
            or not all(
                isinstance(m, dict)
                and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str)
                for m in msgs
            )
        ):
            raise DataError("'messages' must be a non-empty list of {role, content} strings")
        if has_chat_template and render_chat is not None:
            return _chat_segments(msgs, render_chat)
        return _plain_chat_segments(msgs)
    keys = ", ".join(repr(k) for k in list(record)[:5]) or "no keys"
    raise DataError(f"record ({keys}) has none of the accepted shapes: {ACCEPTED_SHAPES}")


def _plain_chat_segments(msgs: list[dict[str, str]]) -> list[Segment]:
    segs: list[Segment] = []
    for m in msgs:
        segs.append((f"<|{m['role']}|>\n", False))
        segs.append((m["content"] + "\n", m["role"] == "assistant"))
    return segs


def _chat_segments(msgs: list[dict[str, str]], render_chat: RenderChat) -> list[Segment]:
    """Split a rendered chat into the assistant turns (targets) and everything else."""
    segs: list[Segment] = []
    done = ""
    for i, m in enumerate(msgs):
        if m["role"] == "assistant":
            prefix = render_chat(msgs[:i], add_generation_prompt=True)
            if prefix.startswith(done) and len(prefix) > len(done):
                segs.append((prefix[len(done) :], False))
                done = prefix
        full = render_chat(msgs[: i + 1], add_generation_prompt=False)
        if not full.startswith(done):
            raise DataError("the tokenizer's chat template does not render turns incrementally")
        segs.append((full[len(done) :], m["role"] == "assistant"))
        done = full
    return segs


def parse_line(line: str, lineno: int) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(
            f"dataset line {lineno} is not valid JSON ({e.msg}: column {e.colno})"
        ) from None


def is_prompt_only(record: Any) -> bool:
    """A record the teacher must answer: ``{"prompt"}`` alone, or messages ending in a user turn."""
    if not isinstance(record, dict):
        return False
    if isinstance(record.get("prompt"), str) and "response" not in record:
        return True
    msgs = record.get("messages")
    return (
        "prompt" not in record
        and isinstance(msgs, list)
        and bool(msgs)
        and isinstance(msgs[-1], dict)
        and msgs[-1].get("role") != "assistant"
    )


@dataclass
class Prompt:
    """A prompt-only record, tokenized up to where the teacher's response begins."""

    record_id: int
    input_ids: list[int]


def encode_prompt(record: Any, tok: Any) -> list[int]:
    """Token ids of a prompt-only record: the prompt, or the chat up to the assistant's turn."""
    if "messages" in record:
        msgs = record["messages"]
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        else:
            text = "".join(a for a, _ in _plain_chat_segments(msgs)) + "<|assistant|>\n"
    else:
        text = record["prompt"]
    return list(tok(text, add_special_tokens=True)["input_ids"])


def with_response(record: Any, text: str) -> dict[str, Any]:
    """The record with the teacher's response filled in (how a generated sample reads)."""
    if "messages" in record:
        return {"messages": [*record["messages"], {"role": "assistant", "content": text}]}
    return {"prompt": record["prompt"], "response": text}


# ---------------------------------------------------------------- tokenizing


def encode_record(record: Any, tok: Any) -> tuple[list[int], list[bool]]:
    """Token ids and target mask of one record, untruncated, ending with EOS."""
    has_template = bool(getattr(tok, "chat_template", None))

    def render(msgs: list[dict[str, str]], add_generation_prompt: bool) -> str:
        return tok.apply_chat_template(
            msgs, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    segments = record_segments(record, has_template, render)
    ids: list[int] = []
    mask: list[bool] = []
    for i, (text, target) in enumerate(segments):
        piece = tok(text, add_special_tokens=(i == 0))["input_ids"]
        ids.extend(piece)
        mask.extend([target] * len(piece))
    if tok.eos_token_id is not None and segments and ids[-1:] != [tok.eos_token_id]:
        ids.append(tok.eos_token_id)
        mask.append(segments[-1][1])
    return ids, mask


def tokenize_record(
    record: Any, record_id: int, tok: Any, max_length: int, stats: TokenizeStats
) -> Sample | None:
    """Tokenize one record; truncate to ``max_length``; None if no target token survives."""
    ids, mask = encode_record(record, tok)
    if len(ids) > max_length:
        ids, mask = ids[:max_length], mask[:max_length]
        stats.truncated += 1
    if not any(mask[1:]):
        stats.dropped_no_target += 1
        return None
    stats.samples += 1
    stats.tokens += len(ids)
    return Sample(record_id, ids, mask)


@dataclass
class LengthScan:
    """What ``max_length`` does to a dataset, measured before any compute."""

    records: int = 0
    overlong: int = 0
    """Records longer than ``max_length`` tokens (truncated, or refused)."""
    first_overlong: tuple[int, int] | None = None
    """(dataset line, tokens) of the first over-long record."""
    no_target: int = 0
    """Records with no training target left within ``max_length`` (dropped by the teacher)."""


def scan_lengths(
    path: Path, index: np.ndarray, tok: Any, max_length: int, generating: bool = False
) -> LengthScan:
    """Tokenize every record as the teacher will and measure it against ``max_length``.

    ``generating``: prompt-only records are the teacher's to answer; they are measured by
    their prompt, which must leave room for a response."""
    scan = LengthScan()
    for rid, record in read_records(path, index, np.arange(len(index))):
        if not generating and is_prompt_only(record) and "messages" not in record:
            raise DataError(
                f"dataset line {int(index[rid, 0])}: record has a prompt and no response: add "
                "teacher.generate to the job spec so the teacher writes the responses, or add "
                "a 'response'"
            )
        if generating and is_prompt_only(record):
            ids = encode_prompt(record, tok)
            scan.records += 1
            if len(ids) >= max_length:
                scan.overlong += 1
                scan.no_target += 1
                if scan.first_overlong is None:
                    scan.first_overlong = (int(index[rid, 0]), len(ids))
            continue
        ids, mask = encode_record(record, tok)
        scan.records += 1
        if len(ids) > max_length:
            scan.overlong += 1
            if scan.first_overlong is None:
                scan.first_overlong = (int(index[rid, 0]), len(ids))
        if not any(mask[1:max_length]):
            scan.no_target += 1
    return scan


# ---------------------------------------------------------------- dataset index and split


@dataclass(frozen=True)
class DatasetIndex:
    rows: np.ndarray
    """``[n, 2]`` int64: (1-based line number, byte offset) of each record."""
    skipped: tuple[int, ...] = ()
    """Line numbers of bad lines skipped (``skip_bad``)."""


def check_shape(record: Any) -> None:
    """Raise DataError unless ``record`` has an accepted shape. A prompt-only record passes:
    whether the job can use it (``teacher.generate``) is the length scan's to say."""
    if is_prompt_only(record) and "messages" not in record:
        return
    record_segments(record, has_chat_template=False)


def check_line(raw: bytes, lineno: int) -> None:
    """Raise DataError naming ``lineno`` unless ``raw`` is one record of an accepted shape."""
    check_size(len(raw), f"dataset line {lineno}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"dataset line {lineno} is not UTF-8; re-encode the file") from None
    record = parse_line(text, lineno)
    try:
        check_shape(record)
    except DataError as e:
        raise DataError(f"dataset line {lineno}: {e}") from None


def index_dataset(path: Path, skip_bad: bool = False) -> DatasetIndex:
    """Validate every line and index the records. Blank lines are not records.

    Raises DataError naming the first bad line, or (``skip_bad``) skips bad lines and
    raises only when no record is left.
    """
    rows: list[tuple[int, int]] = []
    skipped: list[int] = []
    first_error = ""
    try:
        f = path.open("rb")
    except FileNotFoundError:
        raise DataError(f"dataset {path} does not exist; check the 'dataset' path") from None
    with f:
        offset = 0
        for lineno, raw in enumerate(f, start=1):
            if raw.strip():
                try:
                    check_line(raw, lineno)
                    rows.append((lineno, offset))
                except DataError as e:
                    if not skip_bad:
                        raise DataError(f"{e}{SKIP_HINT}") from None
                    skipped.append(lineno)
                    first_error = first_error or str(e)
            offset += len(raw)
    if skipped and not rows:
        raise DataError(
            f"dataset {path} has no valid records: all {len(skipped)} lines were skipped as bad; "
            f"the first: {first_error}"
        )
    if not rows:
        raise DataError(f'dataset {path} has no records; add JSONL lines like {{"text": ...}}')
    return DatasetIndex(np.asarray(rows, dtype=np.int64), tuple(skipped))


def normalize_dataset(
    src: Path, columns: dict[str, str], out: Path, skip_bad: bool = False
) -> DatasetIndex:
    """Stream any supported dataset (``core.sources``) into JSONL at ``out``, one record per
    line, and index it. Bad rows are named by file and row; ``skip_bad`` leaves them out
    (their row numbers are kept) instead of refusing the dataset."""
    rows: list[tuple[int, int]] = []
    skipped: list[int] = []
    first_error = ""
    with out.open("wb") as f:
        for n, (where, rec) in enumerate(sources.records(src, columns), start=1):
            try:
                if isinstance(rec, DataError):
                    raise rec
                line = (json.dumps(rec, ensure_ascii=False) + "\n").encode()
                check_size(len(line), "the record")
                check_shape(rec)
            except DataError as e:
                msg = f"dataset {where}: {e}"
                if not skip_bad:
                    raise DataError(
                        f"{msg}; fix or remove the row, or enqueue with --skip-bad-lines"
                    ) from None
                skipped.append(n)
                first_error = first_error or msg
                continue
            rows.append((len(rows) + 1, f.tell()))
            f.write(line)
    if not rows:
        why = (
            f"all {len(skipped)} rows were bad; the first: {first_error}"
            if skipped
            else "it is empty"
        )
        raise DataError(f"dataset {src} has no valid records: {why}")
    return DatasetIndex(np.asarray(rows, dtype=np.int64), tuple(skipped))


def read_records(path: Path, index: np.ndarray, ids: np.ndarray) -> Iterator[tuple[int, Any]]:
    """Yield ``(record_id, record)`` for the given record ids (rows of ``index``), in order."""
    with path.open("rb") as f:
        for rid in ids.tolist():
            lineno, offset = index[rid]
            f.seek(int(offset))
            yield rid, parse_line(f.readline().decode("utf-8"), int(lineno))


@dataclass(frozen=True)
class Split:
    """Which records are held out for eval and which contiguous train ranges make each shard."""

    n_records: int
    eval_stride: int
    """Every ``eval_stride``-th record (i % stride == stride − 1) is held out; 0: none."""
    shards: tuple[tuple[int, int], ...]
    """Half-open ranges into the list of train record ids."""

    def train_ids(self) -> np.ndarray:
        ids = np.arange(self.n_records, dtype=np.int64)
        if self.eval_stride:
            ids = ids[ids % self.eval_stride != self.eval_stride - 1]
        return ids

    def eval_ids(self) -> np.ndarray:
        ids = np.arange(self.n_records, dtype=np.int64)
        if not self.eval_stride:
            return ids[:0]
        return ids[ids % self.eval_stride == self.eval_stride - 1]

    def shard_ids(self, shard: int) -> np.ndarray:
        a, b = self.shards[shard]
        return self.train_ids()[a:b]


def plan_split(n_records: int, shards: int, eval_fraction: float) -> Split:
    """Deterministic split: a strided eval slice, then N contiguous, near-equal train shards."""
    stride = 0
    if eval_fraction > 0 and n_records >= 2:
        stride = max(2, round(1 / eval_fraction))
    n_eval = n_records // stride if stride else 0
    n_train = n_records - n_eval
    if shards > n_train:
        held = f" ({n_eval} of {n_records} held out by eval_fraction)" if n_eval else ""
        raise DataError(
            f"shards={shards} but the dataset has only {n_train} training records{held}: "
            f"lower 'shards' to at most {n_train}"
        )
    bounds = [round(i * n_train / shards) for i in range(shards + 1)]
    return Split(n_records, stride, tuple(itertools.pairwise(bounds)))


def padded(samples: list[Sample]) -> Padded:
    """``samples`` as one right-padded batch (``storage.padding.pad``, the one padder)."""
    return pad(
        [np.asarray(s.input_ids, dtype=np.int64) for s in samples],
        [np.asarray(s.target_positions(), dtype=np.int64) for s in samples],
    )
