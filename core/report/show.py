"""What a student is taught: one record of a teacher cache shard, as a person reads it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distillq.core.job.jobs import Job
from distillq.core.targets.shard import Shard
from distillq.core.teacher.records import KINDS
from distillq.errors import DistillqError


@dataclass(frozen=True)
class ShownSample:
    record_id: int
    kind: str
    prompt: str
    response: str
    """The target text: the teacher's own response where it wrote one."""
    targets: list[tuple[str, list[tuple[str, float]]]]
    """The first target tokens, each with the teacher's top entries (token text, prob)."""


def on_policy_files(job: Job, track: str, round_: int) -> list[Path]:
    """An on-policy round's files, a part each: scored where the teacher has scored it, else
    the student's samples alone. Raises one line when the round has none yet."""
    parts = range(job.spec.student(track).parts)
    found = [
        scored if scored.exists() else job.paths.onpolicy_samples(track, round_, p)
        for p in parts
        if (scored := job.paths.onpolicy_scored(track, round_, p)).exists()
        or job.paths.onpolicy_samples(track, round_, p).exists()
    ]
    if not found:
        raise DistillqError(
            f"track {track} of job {job.id} has sampled nothing in round {round_} yet; "
            f"`distillq status {job.id}` shows the round in flight"
        )
    return found


def show(
    job: Job,
    shard: int,
    record: int,
    tok: Any,
    top: int = 3,
    tokens: int = 8,
    files: list[Path] | None = None,
) -> list[ShownSample]:
    """The samples of dataset record ``record`` in ``shard``'s cache (several when the teacher
    wrote n responses), or in ``files`` (an on-policy round's). Raises one line when the shard
    or record is not there."""
    path = job.paths.shard(shard) if shard >= 0 else job.paths.teacher_eval_cache
    if files is None and not path.exists():
        raise DistillqError(
            f"job {job.id} has no cache for shard {shard} yet ({path}); `distillq status "
            f"{job.id}` shows which shards are done"
        )
    out = []
    held: list[int] = []
    for f in files or [path]:
        with Shard(f) as r:
            rids = r.record_ids()
            held += rids.tolist()
            out += _shown(r, np.flatnonzero(rids == record), record, tok, top, tokens)
    if not out:
        lo, hi = (min(held), max(held)) if held else (0, -1)
        where = f"shard {shard}" if files is None else "that round"
        raise DistillqError(
            f"record {record} is not in {where} of job {job.id} (it holds records "
            f"{lo}..{hi}); pick one of those"
        )
    return out


def _shown(
    r: Shard, rows: np.ndarray, record: int, tok: Any, top: int, tokens: int
) -> list[ShownSample]:
    out = []
    for j in rows:
        kind, text = r.generated(int(j))
        b = r.batch(int(j), int(j) + 1)
        ids = r.sample_ids(int(j)).tolist()
        cols = b.padded.cols
        first = int(cols[0]) + 1 if len(cols) else len(ids)
        shown = []
        for c in range(min(tokens, len(cols))):
            entries = []
            if b.target_ids is not None and b.target_logprobs is not None:
                for t, lp in zip(b.target_ids[c][:top], b.target_logprobs[c][:top], strict=True):
                    if np.isfinite(lp):
                        entries.append((str(tok.decode([int(t)])), float(np.exp(lp))))
            shown.append((str(tok.decode([int(b.padded.labels[c])])), entries))
        out.append(
            ShownSample(
                record_id=record,
                kind=KINDS[kind],
                prompt=str(tok.decode(ids[:first])),
                response=text or str(tok.decode(ids[first:])),
                targets=shown,
            )
        )
    return out


def side_by_side(
    job: Job, shard: int, record: int, track: str, tokens: int = 16
) -> list[tuple[str, str, str]]:
    """The first target spans of ``record`` for a track of another tokenizer: (the teacher's
    tokens, the student's, how they aligned)."""
    from distillq.core.align.spans import align
    from distillq.core.align.tokens import vocab_bytes
    from distillq.core.job.models import load_tokenizer, sample_tokenizer
    from distillq.core.student import aligned

    if track not in job.info.fingerprints.students:
        raise DistillqError(f"job {job.id} has no student track {track!r}")
    if not aligned.crosses(job, track):
        raise DistillqError(
            f"track {track} shares the teacher cache's tokenizer: its tokens are the teacher's"
        )
    t_tok, s_tok = sample_tokenizer(job.spec), load_tokenizer(job.spec.student(track).model)
    streams = []
    for path in (job.paths.shard(shard), aligned.shard_for(job, track, shard)):
        with Shard(path) as r:
            rows = np.flatnonzero(r.record_ids() == record)
            if not len(rows):
                raise DistillqError(f"record {record} is not in shard {shard} of job {job.id}")
            j = int(rows[0])
            streams.append(r.sample_ids(j)[r.positions_of(j) + 1].tolist())
    tb, sb = vocab_bytes(t_tok), vocab_bytes(s_tok)
    spans = align([tb[i] for i in streams[0]], [sb[i] for i in streams[1]])

    def text(vocab: list[bytes | None], tok: Any, ids: list[int]) -> str:
        # From the vocabulary's bytes: decoding one SentencePiece token alone drops its space.
        shown = []
        for i in ids:
            b = vocab[i]
            shown.append(
                repr(b.decode(errors="replace"))
                if b is not None
                else str(tok.convert_ids_to_tokens(i))
            )
        return " ".join(shown)

    out: list[tuple[str, str, str]] = []
    for sp in spans[:tokens]:
        (a, b), (c, d) = sp.teacher, sp.student
        t_text, s_text = text(tb, t_tok, streams[0][a:b]), text(sb, s_tok, streams[1][c:d])
        out.append((t_text, s_text, sp.kind))
    return out
