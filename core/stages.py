"""The plain functions behind each task: teacher shard, teacher eval, finalize.

Each is idempotent: it checks storage for its own finished output first and returns that.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from distillq.core import faults, onpolicy
from distillq.core.export.gguf import Quant
from distillq.core.export.outputs import export_gguf_outputs, export_track
from distillq.core.job.data import TokenizeStats
from distillq.core.job.jobs import Job
from distillq.core.job.models import (
    load_tokenizer,
)
from distillq.core.job.spec import LocalTeacherSpec, ServedTeacherSpec
from distillq.core.report import report
from distillq.core.student import evaluate
from distillq.core.student import train as student
from distillq.core.targets import registry as targets
from distillq.core.targets.method import shard_fields
from distillq.core.teacher.endpoint import PoolStats
from distillq.core.teacher.gguf import GgufTeacher
from distillq.core.teacher.local import LocalTeacher, Teacher, TeacherStats, write_shard
from distillq.core.teacher.make import local_model, make_teacher
from distillq.core.teacher.served import EndpointTeacher
from distillq.core.track import events as tracking
from distillq.errors import DistillqError
from distillq.storage import cache, checkpoints, records
from distillq.storage.atomic import clear_stale
from distillq.storage.records import (
    EndpointStats,
    EvalResult,
    OnProgress,
    Outputs,
    ProgressFields,
    ReplicaOutcome,
    ShardStats,
)
from distillq.storage.report_records import Report

log = logging.getLogger(__name__)


def teacher_shard(
    job: Job, shard: int, on_progress: OnProgress | None = None
) -> tuple[ShardStats, bool]:
    """Write the verified cache of ``shard`` (or tokens only without a teacher); skip if present.

    Returns the shard's stats and whether it was there already.
    """
    out, stats_file = job.paths.shard(shard), job.paths.shard_stats(shard)
    if (done := cache.verified(out, stats_file)) is not None:
        log.info("job %s shard %d: verified cache exists, skipped", job.id, shard)
        return done, True
    faults.hit(f"teacher_shard:{shard}")
    if clear_stale(out):
        log.warning(
            "job %s shard %d: removed a partial file left by a killed writer", job.id, shard
        )
    t = job.spec.teacher
    ids = job.split.shard_ids(shard)
    started = time.time()
    last_error = ""
    counts_now = (0, 0)

    def progress(samples: int, tokens: int) -> None:
        nonlocal counts_now
        counts_now = (samples, tokens)
        if on_progress:
            rate = tokens / max(1e-9, time.time() - started)
            fields: ProgressFields = {
                "samples": samples,
                "of": len(ids),
                "tokens": tokens,
                "tokens_per_s": round(rate, 1),
            }
            if isinstance(t, ServedTeacherSpec):
                fields["endpoint"] = ",".join(t.endpoint)
                if last_error:
                    fields["last_error"] = last_error
            on_progress(fields)
        if samples:
            faults.hit(f"teacher_progress:{shard}")  # a drill's point: a shard half written

    def on_error(what: str) -> None:
        nonlocal last_error
        last_error = what  # published by the task's thread, in on_wait
        log.warning("job %s shard %d: teacher endpoint: %s (retrying)", job.id, shard, what)

    with contextlib.ExitStack() as stack:
        teacher, tok = make_teacher(job, stack, on_error, lambda: progress(*counts_now))
        meta, (counts, tstats, made) = _write_cache(job, teacher, tok, ids, out, shard, progress)
        http = teacher.http.stats if isinstance(teacher, EndpointTeacher) else None
    stats = _shard_record(shard, started, meta, counts, tstats, made, http)
    record = cache.write_stats(stats_file, out, stats)
    tracking.teacher_shard(job.spec.report_to, job.paths, record)
    log.info(
        "job %s shard %d: %d samples, %d tokens, %.0f tok/s, %d bytes",
        job.id,
        shard,
        record.samples,
        record.tokens,
        record.tokens_per_s,
        record.bytes,
    )
    return record, False


def _shard_record(
    shard: int,
    started: float,
    meta: cache.ShardMeta,
    counts: dict[str, int],
    tokenized: TokenizeStats,
    made: TeacherStats,
    http: PoolStats | None,
) -> ShardStats:
    """The sidecar of a shard just written (its sha256 and size: ``cache.write_stats``)."""
    seconds = time.time() - started
    padding, padding_ungrouped = made.padding.fractions()
    return ShardStats(
        samples=counts["samples"],
        tokens=counts["tokens"],
        target_positions=counts["target_positions"],
        shard=shard,
        truncated=tokenized.truncated,
        dropped_no_target=tokenized.dropped_no_target,
        seconds=round(seconds, 3),
        tokens_per_s=round(counts["tokens"] / max(seconds, 1e-9), 1),
        started_at=started,
        finished_at=time.time(),
        k=meta.width,
        source=meta.source,
        targets={k: v for k, v in made.kinds.items() if v},
        k_obtained=round(made.obtained / made.positions, 2)
        if http is not None and made.positions
        else None,
        fallback_positions=made.fallback_positions,
        dropped_entries=made.dropped_entries,
        endpoint=EndpointStats(**dataclasses.asdict(http)) if http else None,
        padding=padding,
        padding_ungrouped=padding_ungrouped,
    )


def check_or_quarantine(job: Job, shard: int) -> Literal["ok", "missing", "quarantined"]:
    """Check a shard's cache against its recorded sha256 before training reads it.

    "ok": verified. "missing": not there (being regenerated). "quarantined": it failed its
    checksum and this caller moved it to quarantine, so this caller (and only this one) must
    regenerate it.
    """
    out, stats_file = job.paths.shard(shard), job.paths.shard_stats(shard)
    if cache.verified(out, stats_file) is not None:
        return "ok"
    if not out.exists():
        return "missing"
    stamp = time.strftime("%Y%m%dT%H%M%S")
    q = job.paths.quarantine_dir
    q.mkdir(parents=True, exist_ok=True)
    try:
        # The stats file goes first: without it the shard no longer counts as finished.
        stats_file.replace(q / f"{stats_file.stem}.{stamp}.json")
        out.replace(q / f"{out.stem}.{stamp}.h5")
    except FileNotFoundError:
        return "missing"  # another replica of the round quarantined it first
    log.error(
        "job %s shard %d: cache fails its checksum; moved to %s, regenerating", job.id, shard, q
    )
    return "quarantined"


def replica(
    job: Job,
    track: str,
    shard: int,
    index: int,
    on_progress: OnProgress | None = None,
) -> ReplicaOutcome:
    """Train one replica of a round, unless its work is already on storage.

    A skipped outcome ("merged", "regenerate" or "missing", see ``ReplicaOutcome``) makes the
    merge abandon the round; it is queued again when the shard lands.
    """
    latest = checkpoints.latest(job.paths, track)
    if latest is not None and shard in latest.meta.merged_shards:
        return ReplicaOutcome(skipped="merged")
    done = checkpoints.replica_stats(job.paths, track, shard, index)
    if done is not None and done.start_version == (latest.version if latest else 0):
        return ReplicaOutcome(stats=done)  # redelivered after it finished
    usable = check_or_quarantine(job, job.cache_shard(shard))
    if usable != "ok":
        return ReplicaOutcome(skipped="regenerate" if usable == "quarantined" else "missing")
    faults.hit(f"replica:{track}:{shard}:{index}")
    return ReplicaOutcome(stats=student.train_replica(job, track, shard, index, on_progress))


def teacher_eval(job: Job) -> EvalResult:
    """The teacher's held-out loss on the eval slice, saved to ``teacher/eval.json``.

    A served or generating teacher first writes the held-out slice as it makes shards
    (``teacher/eval.h5``): the students' held-out eval reads the responses it wrote there,
    and a served teacher's loss comes from the log-probs it returned."""
    if (done := records.read_if_exists(EvalResult, job.paths.teacher_eval)) is not None:
        return done
    t = job.spec.teacher
    assert t is not None
    if isinstance(t, LocalTeacherSpec) and not (t.is_gguf or t.generate is not None):
        model, tok = local_model(t)
        samples = evaluate.eval_samples(job, tok)
        result = dataclasses.replace(
            evaluate.with_bytes(evaluate.eval_loss(model, samples), tok, samples),
            generations=evaluate.generate(model, tok, samples),
        )
        records.write(job.paths.teacher_eval, result)
        return result
    out, ids = job.paths.teacher_eval_cache, job.split.eval_ids()
    with contextlib.ExitStack() as stack:
        teacher, tok = make_teacher(job, stack)  # one teacher for the slice and the report
        assert teacher is not None
        if not out.exists() and len(ids):
            _write_cache(job, teacher, tok, ids, out, -1)
        samples = evaluate.eval_samples(job, tok)
        if isinstance(teacher, GgufTeacher):
            result = teacher.eval_loss(samples)  # its full logits: the exact CE
            gens = teacher.continuations(evaluate.prompts(samples), evaluate.NEW_TOKENS)
        elif isinstance(teacher, EndpointTeacher):
            result = (
                evaluate.cached_teacher_loss(out) if out.exists() else EvalResult(float("nan"), 0)
            )
            gens = teacher.continuations(evaluate.prompts(samples), evaluate.NEW_TOKENS)
        else:
            assert isinstance(teacher, LocalTeacher)
            result = evaluate.eval_loss(teacher.model, samples)
            gens = evaluate.generate(teacher.model, tok, samples)
    result = dataclasses.replace(evaluate.with_bytes(result, tok, samples), generations=gens)
    records.write(job.paths.teacher_eval, result)
    return result


def _write_cache(
    job: Job,
    teacher: Teacher | None,
    tok: Any,
    ids: np.ndarray,
    out: Path,
    shard: int,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[cache.ShardMeta, tuple[dict[str, int], TokenizeStats, TeacherStats]]:
    """Records ``ids`` of the dataset, through ``teacher``, into the cache file ``out``
    (a shard, or the held-out slice as shard -1)."""
    t, fp = job.spec.teacher, job.info.fingerprints
    method = targets.build(t) if t else None
    meta = cache.ShardMeta(
        shard=shard,
        vocab_size=fp.vocab_size or len(tok),
        temperature=t.temperature if t else 1.0,
        teacher_fingerprint=fp.teacher,
        tokenizer_fingerprint=fp.tokenizer,
        record_range=(int(ids[0]), int(ids[-1]) + 1),
        source=teacher.source if teacher else "none",
        **shard_fields(method),
    )
    made = write_shard(
        teacher=teacher,
        tok=tok,
        dataset=job.paths.dataset,
        index=job.index,
        record_ids=ids,
        out=out,
        meta=meta,
        max_length=job.spec.sample_max_length,
        method=method,
        generating=bool(t and t.generate),
        on_progress=on_progress,
    )
    return meta, made


def finalize(job: Job) -> Report:
    """Export every track, evaluate it on the held-out slice, and write the report."""
    for spec in job.spec.students:
        eval_file = job.paths.student_eval(spec.name)
        if eval_file.exists():
            continue
        ckpt = checkpoints.latest(job.paths, spec.name)
        if ckpt is None:
            raise RuntimeError(f"job {job.id} track {spec.name}: no merged checkpoint to finalize")
        tok = load_tokenizer(spec.model)
        samples = evaluate.eval_samples(job, tok)
        model = student.build(spec)  # as built, it is the seeded start every replica began from
        baseline = evaluate.eval_loss(model, samples).loss if samples else None
        student.load_params(model, ckpt.params())
        measured = (
            evaluate.with_bytes(evaluate.eval_loss(model, samples), tok, samples)
            if samples
            else EvalResult(float("nan"), 0)
        )
        generations = evaluate.generate(model, tok, samples)
        on_policy = (
            onpolicy.heldout(job, spec.name, student.build(spec), model)
            if spec.on_policy is not None
            else None
        )
        # Exported last: merge_and_unload folds the adapter into the model in place.
        outputs = export_track(model, spec, job.paths.final_dir(spec.name))
        outputs = outputs.with_(
            export_gguf_outputs(outputs.merged, job.paths.gguf_dir(spec.name), spec.name)
        )
        records.write(
            eval_file,
            dataclasses.replace(
                measured,
                version=ckpt.version,
                outputs=outputs,
                baseline=baseline,
                generations=generations,
                on_policy=on_policy,
            ),
        )
    data = report.write(job)
    if job.spec.report_to:
        table = job.paths.report_md.read_text() if job.paths.report_md.exists() else ""
        tracking.finished(job.spec.report_to, job.paths, data, table)
    return data


def export_finished(job: Job, tracks: list[str], quants: tuple[Quant, ...]) -> dict[str, Outputs]:
    """(Re)write the GGUF files of finished tracks from their ``final/merged``; update each
    track's recorded outputs and the report. Returns the outputs per track."""
    done = {}
    for name in tracks:
        spec = job.spec.student(name)
        ev = records.read_if_exists(EvalResult, job.paths.student_eval(name))
        if ev is None:
            raise DistillqError(
                f"track {name} of job {job.id} has not finished; `distillq wait {job.id}` first"
            )
        kept = (ev.outputs or Outputs()).without_gguf()
        outputs = kept.with_(
            export_gguf_outputs(kept.merged, job.paths.gguf_dir(spec.name), spec.name, quants)
        )
        records.write(job.paths.student_eval(name), dataclasses.replace(ev, outputs=outputs))
        done[name] = outputs
    report.write(job)
    return done
