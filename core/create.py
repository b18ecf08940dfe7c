"""Create a job on storage: validate, fingerprint, freeze (``core.job.jobs`` loads it back).

``create_job`` does every check that can fail before any compute: models and tokenizers exist,
teacher and students share a tokenizer, the PEFT methods are known, the dataset parses, the
split fits. Only then does ``job.yaml`` appear, last, so a job directory without it is junk.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import math
import secrets
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from distillq.core.job import reuse, sources
from distillq.core.job.data import (
    DatasetIndex,
    Split,
    index_dataset,
    normalize_dataset,
    plan_split,
    scan_lengths,
)
from distillq.core.job.gguf_models import check_tokenizer, read_info
from distillq.core.job.jobs import Job, load_job
from distillq.core.job.models import (
    check_weights,
    config_vocab_size,
    gguf_sample_tokenizer,
    load_tokenizer,
    model_fingerprint,
    tokenizer_fingerprint,
)
from distillq.core.job.spec import JobSpec, ServedTeacherSpec
from distillq.core.student import peft_methods
from distillq.core.targets import registry as targets
from distillq.core.track import registry as tracking
from distillq.errors import DataError, DistillqError, ModelError, SpecError
from distillq.storage import records
from distillq.storage.atomic import atomic_path, write_bytes
from distillq.storage.cache import file_sha256
from distillq.storage.layout import JobPaths, checks_memo, job_paths, staging_dataset
from distillq.storage.records import DataNotes, Fingerprints, JobInfo, StudentFingerprint


def _check_models(spec: JobSpec, peft_memo: Path) -> tuple[Fingerprints, Any, list[str]]:
    """Load every tokenizer (cheap; no weights), compare fingerprints, check top_k. Raises.

    Returns the fingerprints, the tokenizer the teacher stage tokenizes samples with, and
    the peft option sets newly checked (remembered once the job exists).
    """
    students: dict[str, StudentFingerprint] = {}
    teacher_fp, vocab_size = "", None
    teacher_tok_fp = None
    sample_tok = None
    checked: list[str] = []
    if isinstance(spec.teacher, ServedTeacherSpec):
        t = spec.teacher
        ref = t.tokenizer or spec.students[0].model
        tok = sample_tok = load_tokenizer(ref, "teacher tokenizer", light=True)
        teacher_tok_fp = tokenizer_fingerprint(tok)
        vocab_size = _vocab_of(ref, tok)
        # A served model is named, not hashed: its identity is the name on its servers.
        teacher_fp = hashlib.sha256(f"endpoint:{t.model}".encode()).hexdigest()[:16]
    elif spec.teacher and spec.teacher.is_gguf:
        g = spec.teacher
        info = read_info(g.model)
        tok, what = gguf_sample_tokenizer(spec, light=True)
        check_tokenizer(info, tok, what)
        sample_tok = tok
        teacher_tok_fp = tokenizer_fingerprint(tok)
        targets.check_vocabulary(g, len(info.tokens))
        teacher_fp, vocab_size = info.fingerprint, len(info.tokens)
    elif spec.teacher:
        tok = sample_tok = load_tokenizer(spec.teacher.model, "teacher model", light=True)
        teacher_tok_fp = tokenizer_fingerprint(tok)
        vocab = config_vocab_size(spec.teacher.model)
        targets.check_vocabulary(spec.teacher, vocab)
        check_weights(spec.teacher.model, "teacher model")
        teacher_fp, vocab_size = model_fingerprint(spec.teacher.model), vocab
    for s in spec.students:
        if (digest := peft_methods.check(s.peft, peft_memo, s.model)) is not None:
            checked.append(digest)
        tok = load_tokenizer(s.model, f"student {s.name!r} model", light=True)
        fp = tokenizer_fingerprint(tok)
        if teacher_tok_fp is not None and fp != teacher_tok_fp:
            _check_crossing(spec, s.name, s.model)
        check_weights(s.model, f"student {s.name!r} model")
        head = _vocab_of(s.model, tok)
        if head < len(tok):
            raise ModelError(
                f"student {s.name!r} ({s.model}) has {head} output rows for a tokenizer of "
                f"{len(tok)} tokens: teacher targets would index past its head; resize its "
                "embeddings to the tokenizer"
            )
        students[s.name] = StudentFingerprint(model=model_fingerprint(s.model), tokenizer=fp)
        sample_tok = sample_tok or tok
    assert teacher_tok_fp is not None or spec.students  # the spec refuses neither
    fps = Fingerprints(
        tokenizer=teacher_tok_fp or students[spec.students[0].name].tokenizer,
        students=students,
        teacher=teacher_fp,
        vocab_size=vocab_size,
    )
    return fps, sample_tok, checked


def _check_crossing(spec: JobSpec, name: str, model: str) -> None:
    """A student of another tokenizer learns through alignment (core/align), which maps top-k
    targets; refuse what it cannot map yet, in one line."""
    t = spec.teacher
    if spec.student(name).on_policy is not None:
        raise ModelError(
            f"student {name!r} ({model}) has a different tokenizer than the teacher, and "
            "on-policy distillation needs the teacher to score the student's own tokens: "
            "remove on_policy from this track, or pick a student of the teacher's tokenizer"
        )
    if t is not None and t.target_method != "topk":
        raise ModelError(
            f"student {name!r} ({model}) has a different tokenizer than the teacher, and "
            f"cross-tokenizer targets are mapped from the top-k: set teacher.target_method: topk "
            f"(not {t.target_method}), or pick a student of the teacher's tokenizer"
        )


def _vocab_of(ref: str, tok: Any) -> int:
    try:
        return config_vocab_size(ref)
    except DistillqError:
        return len(tok)  # a tokenizer-only directory: its own size


def _check_lengths(spec: JobSpec, data: Path, index: DatasetIndex, tok: Any) -> DataNotes:
    """Measure every sample against the token limit; refuse per ``spec.overlong``. Raises.

    Done at enqueue, although it tokenizes the dataset once more, because this is where the
    user still reads the output: a worker's truncation count lands in a log nobody opens.
    """
    limit, key = spec.sample_max_length, spec.max_length_key
    generating = bool(spec.teacher and spec.teacher.generate)
    scan = scan_lengths(data, index.rows, tok, limit, generating)
    if scan.first_overlong and spec.overlong == "refuse":
        line, n = scan.first_overlong
        raise DataError(
            f"dataset line {line} is {n} tokens, over {key}={limit} ({scan.overlong} records exceed it); "
            f"raise {key}, shorten those records, or set overlong: truncate"
        )
    if scan.no_target == scan.records:
        raise DataError(
            f"no record of dataset {spec.dataset} has a training target within its first {limit} "
            f"tokens (prompts too long, or no response/assistant turn); raise {key} or fix the data"
        )
    return DataNotes(
        records=len(index.rows),
        skipped_lines=len(index.skipped),
        first_skipped_lines=[int(x) for x in index.skipped[:10]],
        max_length=limit,
        truncated=scan.overlong,
        no_target=scan.no_target,
    )


def _total_steps(spec: JobSpec, split: Split) -> dict[str, int]:
    """Optimizer steps a track takes over the job (sets the LR schedule's length)."""
    out = {}
    for s in spec.students:
        steps = 0
        for a, b in split.shards:
            per_replica = math.ceil((b - a) / s.replicas)
            steps += math.ceil(math.ceil(per_replica / s.batch_size) / s.grad_accum) * s.epochs
        out[s.name] = steps * s.dataset_epochs
    return out


def _cache_source(storage: Path, spec: JobSpec) -> Job | None:
    """The job whose cache ``spec`` reuses (``teacher.from_job``), checked against the spec."""
    if spec.teacher is None or not spec.teacher.from_job:
        return None
    source = load_job(storage, spec.teacher.from_job)
    reuse.check(spec, source)
    return source


def _check_cache_fits(
    spec: JobSpec, source: Job, data: Path, split: Split, fps: Fingerprints
) -> None:
    """What only the read dataset and tokenizers tell: is ``source``'s cache this job's?"""
    theirs = source.info.fingerprints
    if file_sha256(data) != theirs.dataset_sha256:
        raise SpecError(
            f"dataset {spec.dataset} is not the one job {source.id}'s cache was made from "
            f"(sha256 {theirs.dataset_sha256[:12]}...): remove dataset to reuse that job's"
        )
    if split.shards != source.split.shards or split.eval_stride != source.split.eval_stride:
        raise SpecError(
            f"shards: the dataset splits into other shards than job {source.id}'s cache; "
            "enqueue with the same shards and eval_fraction, or without them"
        )
    if fps.tokenizer != theirs.tokenizer:
        raise SpecError(
            f"tokenizer: the students' tokenizer is not the one job {source.id}'s cache was "
            "made with (its targets are ids of that tokenizer); pick students of that family"
        )
    if fps.teacher != theirs.teacher:
        raise SpecError(
            f"teacher.model {spec.teacher.model if spec.teacher else ''} has changed since job "
            f"{source.id}'s cache was made (its config or weight files differ); build a new cache"
        )


def new_job_id(name: str) -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{name}-{stamp}-{secrets.token_hex(2)}"


def create_job(
    storage: Path, spec: JobSpec, job_id: str | None = None, skip_bad_lines: bool = False
) -> Job:
    """Validate everything, then write the job's directory. Returns the frozen job.

    ``skip_bad_lines``: leave malformed or shapeless dataset lines out (counted in
    ``info.data``) instead of refusing the dataset.
    """
    src = Path(spec.dataset)
    tracking.check(spec.report_to)  # a tracker named but not installed: before any work
    source = _cache_source(storage, spec)
    staged = None
    if sources.kind(src) == "jsonl" and not spec.columns:
        data, index = src, index_dataset(src, skip_bad=skip_bad_lines)
    else:
        # Any other format is streamed into the job's own JSONL once, here: from then on
        # every stage reads records by byte offset, whatever the user's format was.
        staged = data = staging_dataset(storage, secrets.token_hex(4))
        data.parent.mkdir(parents=True, exist_ok=True)
    try:
        if staged is not None:
            index = normalize_dataset(src, spec.columns, staged, skip_bad=skip_bad_lines)
        total = len(index.rows)
        if spec.max_records is not None and total > spec.max_records:
            index = dataclasses.replace(index, rows=index.rows[: spec.max_records])
        split = plan_split(len(index.rows), spec.shards, spec.eval_fraction)
        peft_memo = checks_memo(storage, "peft")
        fingerprints, tok, peft_checked = _check_models(spec, peft_memo)
        if source is not None:
            _check_cache_fits(spec, source, data, split, fingerprints)
        info = JobInfo(
            fingerprints=fingerprints,
            total_steps=_total_steps(spec, split),
            data=dataclasses.replace(
                _check_lengths(spec, data, index, tok),
                of_records=total if len(index.rows) < total else 0,
            ),
        )
        if spec.teacher is not None and spec.teacher.is_gguf:
            info = dataclasses.replace(
                info, teacher_quantization=read_info(spec.teacher.model).quantization
            )
        if isinstance(spec.teacher, ServedTeacherSpec) and source is not None:
            # The cache's own: its servers need not be up to train on what it holds.
            info = dataclasses.replace(info, teacher_dialect=source.info.teacher_dialect)
        elif isinstance(spec.teacher, ServedTeacherSpec):
            from distillq.core.teacher import served  # only here: it pulls in the HTTP client

            info = dataclasses.replace(info, teacher_dialect=served.probe(spec.teacher, tok))
        if source is not None:
            info = dataclasses.replace(info, cache_job=reuse.owner(source))
        paths = job_paths(storage, job_id or new_job_id(spec.name), info.cache_job)
        paths.root.mkdir(parents=True, exist_ok=False)
        try:
            job = _write_job(paths, spec, data, index.rows, split, info)
        except BaseException:
            # The directory is ours (exist_ok=False): a disk-full or interrupted write leaves no junk.
            shutil.rmtree(paths.root, ignore_errors=True)
            raise
    finally:
        if staged is not None:
            staged.unlink(missing_ok=True)
    peft_methods.remember(peft_memo, peft_checked)
    return job


def _write_job(
    paths: JobPaths, spec: JobSpec, data: Path, index: np.ndarray, split: Split, info: JobInfo
) -> Job:
    with atomic_path(paths.dataset) as tmp:
        shutil.copyfile(data, tmp)
    info = dataclasses.replace(
        info,
        fingerprints=dataclasses.replace(
            info.fingerprints, dataset_sha256=file_sha256(paths.dataset)
        ),
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )
    with atomic_path(paths.root / "index.npy") as tmp, tmp.open("wb") as f:
        np.save(f, index)
    frozen = {
        "job_id": paths.job_id,
        "spec": spec.to_dict(),
        "split": {
            "n_records": split.n_records,
            "eval_stride": split.eval_stride,
            "shards": [list(x) for x in split.shards],
        },
        "info": records.to_json(info),
    }
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml: the shard list is long
    write_bytes(paths.spec, yaml.dump(frozen, Dumper=dumper, sort_keys=False).encode())
    return Job(paths, spec, split, info)
