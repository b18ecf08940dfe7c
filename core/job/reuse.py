"""``teacher: {from_job: ID}``: a new job trained on another job's teacher cache.

The cache is only reusable where every shard means what the new spec would have made: the same
teacher, tokenizer, dataset (sha256), split, target method, k or N, τ and token limit. Enqueue
fills what the spec leaves out from that job and refuses, in one line naming the field, what
it says differently. The new job then reads the owner's ``teacher/`` directory (``JobPaths``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distillq.core.job.jobs import Job, load_job
from distillq.core.job.spec import JobSpec
from distillq.errors import SpecError

CACHE_KEYS = (
    "model",
    "target_method",
    "top_k",
    "samples",
    "proposal_temperature",
    "seed",
    "temperature",
    "max_length",
    "generate",
    "tokenizer",
)
"""Teacher keys that change what a shard holds; the rest (batch_size, endpoints, retries...)
only change how a missing shard is computed, and may differ."""
SPLIT_KEYS = ("shards", "eval_fraction")


def source_of(raw: dict[str, Any], storage: Path) -> Job | None:
    t = raw.get("teacher")
    if not (isinstance(t, dict) and t.get("from_job") is not None):
        return None
    return load_job(storage, str(t["from_job"]))


def resolve(raw: dict[str, Any], storage: Path) -> dict[str, Any]:
    """``raw`` with ``teacher: {from_job: ID, ...}`` made whole from job ID: its teacher, dataset
    and split, where the spec leaves them out. Raises SpecError where the spec disagrees with
    the cache; the dataset and tokenizers are compared by ``check`` once they are read."""
    source = source_of(raw, storage)
    if source is None:
        return raw
    if source.spec.teacher is None:
        raise SpecError(
            f"teacher.from_job={source.id} has no teacher cache (mode data_parallel); name a job "
            "that had a teacher"
        )
    given = {k: v for k, v in raw["teacher"].items() if k != "from_job"}
    theirs = source.spec.to_dict()["teacher"]
    out = dict(raw)
    out["teacher"] = {**theirs, **given, "from_job": source.id}
    for key in SPLIT_KEYS:
        out.setdefault(key, getattr(source.spec, key))
    out.setdefault("dataset", str(source.paths.dataset))
    return out


def check(spec: JobSpec, source: Job) -> None:
    """Refuse a spec whose teacher or split does not fit ``source``'s cache, naming the field."""
    ours, theirs = spec.teacher, source.spec.teacher
    assert ours is not None and theirs is not None
    for key in CACHE_KEYS:
        a, b = getattr(ours, key, None), getattr(theirs, key, None)
        if a != b:
            raise SpecError(
                f"teacher.{key}={a!r} does not fit job {source.id}'s cache, made with {key} "
                f"{b!r}: remove teacher.{key} to reuse that cache, or drop from_job to build one"
            )
    if type(ours) is not type(theirs):
        raise SpecError(
            f"teacher.endpoint: job {source.id}'s cache was made by a "
            f"{'served' if theirs.is_endpoint else 'local'} teacher; reuse it with the same kind"
        )
    for key in SPLIT_KEYS:
        a, b = getattr(spec, key), getattr(source.spec, key)
        if a != b:
            raise SpecError(
                f"{key}={a} does not fit job {source.id}'s cache ({key} {b}): the shards must be "
                f"the same; remove {key} to take the cache's"
            )


def owner(source: Job) -> str:
    """The job whose directory holds the cache (a reuse of a reuse reads the first one's)."""
    return source.info.cache_job or source.id
