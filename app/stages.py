"""The plain functions behind each task: teacher shard, teacher eval, finalize.

Each is idempotent: it checks storage for its own finished output first and returns that.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any

from app import evaluate, faults, report
from app.export import export_track
from app.job_store import Job
from app.models import load_causal_lm, load_tokenizer, vocab_size
from app.teacher import write_shard
from storage import cache, checkpoints
from storage.atomic import clear_stale, read_json, write_json

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def _teacher(ref: str) -> tuple[Any, Any]:
    """The teacher model and tokenizer, loaded once per worker process."""
    return load_causal_lm(ref, "teacher model"), load_tokenizer(ref, "teacher model")


def teacher_shard(
    job: Job, shard: int, on_progress: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Write the verified cache of ``shard`` (or tokens only without a teacher); skip if present."""
    out, stats_file = job.paths.shard(shard), job.paths.shard_stats(shard)
    if (done := cache.verified(out, stats_file)) is not None:
        log.info("job %s shard %d: verified cache exists, skipped", job.id, shard)
        return {**done, "skipped": True}
    faults.hit(f"teacher_shard:{shard}")
    if clear_stale(out):
        log.warning(
            "job %s shard %d: removed a partial file left by a killed writer", job.id, shard
        )
    t = job.spec.teacher
    if t is not None:
        model, tok = _teacher(t.model)
        vocab, top_k, temperature = vocab_size(model), t.top_k, t.temperature
    else:
        model, tok = None, load_tokenizer(job.spec.students[0].model)
        vocab, top_k, temperature = len(tok), 0, 1.0
    fp = job.info["fingerprints"]
    ids = job.split.shard_ids(shard)
    meta = cache.ShardMeta(
        shard=shard,
        vocab_size=vocab,
        top_k=top_k,
        temperature=temperature,
        teacher_fingerprint=fp.get("teacher", ""),
        tokenizer_fingerprint=fp["tokenizer"],
        record_range=(int(ids[0]), int(ids[-1]) + 1),
    )
    started = time.time()

    def progress(samples: int, tokens: int) -> None:
        if on_progress:
            rate = tokens / max(1e-9, time.time() - started)
            on_progress(
                {
                    "samples": samples,
                    "of": len(ids),
                    "tokens": tokens,
                    "tokens_per_s": round(rate, 1),
                }
            )

    counts, tstats = write_shard(
        model=model,
        tok=tok,
        dataset=job.paths.dataset,
        index=job.index,
        record_ids=ids,
        out=out,
        meta=meta,
        batch_size=t.batch_size if t else 16,
        max_length=job.spec.sample_max_length,
        on_progress=progress,
    )
    seconds = time.time() - started
    record = cache.write_stats(
        stats_file,
        out,
        {
            **counts,
            "shard": shard,
            "truncated": tstats.truncated,
            "dropped_no_target": tstats.dropped_no_target,
            "seconds": round(seconds, 3),
            "tokens_per_s": round(counts["tokens"] / max(seconds, 1e-9), 1),
            "started_at": started,
            "finished_at": time.time(),
            "k": top_k,
        },
    )
    log.info(
        "job %s shard %d: %d samples, %d tokens, %.0f tok/s, %d bytes",
        job.id,
        shard,
        counts["samples"],
        counts["tokens"],
        record["tokens_per_s"],
        record["bytes"],
    )
    return record


def cache_usable(job: Job, shard: int) -> bool | None:
    """Check a shard's cache against its recorded sha256 before training reads it.

    True: verified. None: not there (being regenerated). False: it failed its checksum, and
    this caller moved it to quarantine, so this caller (and only this one) must regenerate it.
    """
    out, stats_file = job.paths.shard(shard), job.paths.shard_stats(shard)
    if cache.verified(out, stats_file) is not None:
        return True
    if not out.exists():
        return None
    stamp = time.strftime("%Y%m%dT%H%M%S")
    q = job.paths.quarantine_dir
    q.mkdir(parents=True, exist_ok=True)
    try:
        # The stats file goes first: without it the shard no longer counts as finished.
        stats_file.replace(q / f"{stats_file.stem}.{stamp}.json")
        out.replace(q / f"{out.stem}.{stamp}.h5")
    except FileNotFoundError:
        return None  # another replica of the round quarantined it first
    log.error(
        "job %s shard %d: cache fails its checksum; moved to %s, regenerating", job.id, shard, q
    )
    return False


def replica(
    job: Job,
    track: str,
    shard: int,
    index: int,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train one replica of a round, unless its work is already on storage.

    Returns the replica's stats, or ``{"skipped": why}``; ``why`` is "merged" (a duplicate
    delivery after the merge), "regenerate" (this call quarantined a corrupt cache) or
    "missing" (the cache is being regenerated): the round is abandoned and queued again when
    the shard lands.
    """
    from app import student

    if shard in checkpoints.merged_shards(job.paths, track):
        return {"skipped": "merged"}
    latest = checkpoints.latest(job.paths, track)
    done = checkpoints.replica_stats(job.paths, track, shard, index)
    if done is not None and done["start_version"] == (latest.version if latest else 0):
        return {k: v for k, v in done.items() if k != "curve"}  # redelivered after it finished
    usable = cache_usable(job, shard)
    if not usable:
        return {"skipped": "regenerate" if usable is False else "missing"}
    faults.hit(f"replica:{track}:{shard}:{index}")
    stats = student.train_replica(job, track, shard, index, on_progress)
    return {k: v for k, v in stats.items() if k != "curve"}


def teacher_eval(job: Job) -> dict[str, Any]:
    """The teacher's held-out loss on the eval slice, saved to ``teacher/eval.json``."""
    if job.paths.teacher_eval.exists():
        return dict(read_json(job.paths.teacher_eval))
    assert job.spec.teacher is not None
    model, tok = _teacher(job.spec.teacher.model)
    result = evaluate.eval_loss(model, evaluate.eval_samples(job, tok))
    write_json(job.paths.teacher_eval, result)
    return result


def finalize(job: Job) -> dict[str, Any]:
    """Export every track, evaluate it on the held-out slice, and write the report."""
    from app.student import build, load_params

    for spec in job.spec.students:
        eval_file = job.paths.student_eval(spec.name)
        if eval_file.exists():
            continue
        ckpt = checkpoints.latest(job.paths, spec.name)
        if ckpt is None:
            raise RuntimeError(f"job {job.id} track {spec.name}: no merged checkpoint to finalize")
        model = build(spec)
        load_params(model, ckpt.params())
        samples = evaluate.eval_samples(job, load_tokenizer(spec.model))
        result: dict[str, Any] = (
            dict(evaluate.eval_loss(model, samples))
            if samples
            else {"loss": float("nan"), "tokens": 0}
        )
        result["outputs"] = export_track(model, spec, job.paths.final_dir(spec.name))
        result["version"] = ckpt.version
        write_json(eval_file, result)
    return report.write(job)
