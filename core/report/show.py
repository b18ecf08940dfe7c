"""What a student is taught: one record of a teacher cache shard, as a person reads it."""

from __future__ import annotations

from dataclasses import dataclass
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


def show(
    job: Job, shard: int, record: int, tok: Any, top: int = 3, tokens: int = 8
) -> list[ShownSample]:
    """The samples of dataset record ``record`` in ``shard``'s cache (several when the teacher
    wrote n responses). Raises one line when the shard or record is not there."""
    path = job.paths.shard(shard) if shard >= 0 else job.paths.teacher_eval_cache
    if not path.exists():
        raise DistillqError(
            f"job {job.id} has no cache for shard {shard} yet ({path}); `distillq status "
            f"{job.id}` shows which shards are done"
        )
    out = []
    with Shard(path) as r:
        rids = r.record_ids()
        rows = np.flatnonzero(rids == record)
        if not len(rows):
            lo, hi = (int(rids.min()), int(rids.max())) if len(rids) else (0, -1)
            raise DistillqError(
                f"record {record} is not in shard {shard} of job {job.id} (it holds records "
                f"{lo}..{hi}); pick one of those"
            )
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
                    for t, lp in zip(
                        b.target_ids[c][:top], b.target_logprobs[c][:top], strict=True
                    ):
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
