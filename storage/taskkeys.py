"""Task keys: the name of one logical unit of work, built and parsed here and nowhere else.

A task key names a failure record (``failures/<key>.json``), a progress entry and an attempt
counter in Redis (``storage/keys.py``). One delivery or many, the same work has the same key:

    teacher-00003            teacher_shard(shard=3)
    teacher-eval             teacher_eval
    replica-kd-00003-1       train_replica(track="kd", shard=3, replica=1)
    merge-kd-00003           merge_round(track="kd", shard=3)
    sample-kd-00003-1        sample_part(track="kd", round=3, part=1)   (on-policy)
    score-kd-00003-1         score_part(track="kd", round=3, part=1)    (on-policy)
    finalize                 finalize

Track names are checked by ``storage.layout.check_name`` (letters, digits, ``_``, ``-``), so a
track may hold ``-``: parsing splits from the right, where the numbers are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["teacher", "teacher-eval", "replica", "merge", "sample", "score", "finalize"]


@dataclass(frozen=True)
class TaskKey:
    kind: Kind
    track: str | None = None
    shard: int | None = None
    replica: int | None = None

    def __str__(self) -> str:
        if self.kind == "teacher":
            return f"teacher-{self.shard:05d}"
        if self.kind in ("replica", "sample", "score"):
            return f"{self.kind}-{self.track}-{self.shard:05d}-{self.replica}"
        if self.kind == "merge":
            return f"merge-{self.track}-{self.shard:05d}"
        return self.kind


def teacher(shard: int) -> TaskKey:
    return TaskKey("teacher", shard=shard)


TEACHER_EVAL = TaskKey("teacher-eval")
FINALIZE = TaskKey("finalize")


def replica(track: str, shard: int, index: int) -> TaskKey:
    return TaskKey("replica", track=track, shard=shard, replica=index)


def sample(track: str, round_: int, part: int) -> TaskKey:
    """The student sampling part ``part`` of an on-policy round (``shard`` holds the round)."""
    return TaskKey("sample", track=track, shard=round_, replica=part)


def score(track: str, round_: int, part: int) -> TaskKey:
    """The teacher scoring part ``part`` of an on-policy round."""
    return TaskKey("score", track=track, shard=round_, replica=part)


def merge(track: str, shard: int) -> TaskKey:
    return TaskKey("merge", track=track, shard=shard)


def parse(text: str) -> TaskKey | None:
    """The key ``text`` spells, or None if it is not a task key."""
    if text in ("teacher-eval", "finalize"):
        return TEACHER_EVAL if text == "teacher-eval" else FINALIZE
    head, _, rest = text.partition("-")
    try:
        if head == "teacher" and rest.isdigit():
            return teacher(int(rest))
        if head in ("replica", "sample", "score"):
            track, shard, index = rest.rsplit("-", 2)
            return {"replica": replica, "sample": sample, "score": score}[head](
                track, int(shard), int(index)
            )
        if head == "merge":
            track, shard = rest.rsplit("-", 1)
            return merge(track, int(shard))
    except ValueError:
        return None
    return None
