"""A job on storage as workers see it: load it back anywhere, list jobs, say what enqueue did."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from distillq.core.job.data import Split
from distillq.core.job.load import spec_from_stored
from distillq.core.job.spec import JobSpec
from distillq.errors import JobNotFound
from distillq.storage import records
from distillq.storage.layout import JobPaths, job_paths, jobs_root
from distillq.storage.records import JobInfo


@dataclass(frozen=True)
class Job:
    """A frozen job as workers see it: spec, split, fingerprints and paths."""

    paths: JobPaths
    spec: JobSpec
    split: Split
    info: JobInfo

    @property
    def id(self) -> str:
        return self.paths.job_id

    @cached_property
    def index(self) -> np.ndarray:
        return np.load(self.paths.root / "index.npy")

    @property
    def n_shards(self) -> int:
        return len(self.split.shards)

    def rounds(self, track: str) -> int:
        """Rounds of ``track``: one per shard per dataset epoch. Round ``e·n + s`` is shard
        ``s`` in epoch ``e`` (what ``merged_shards``, round directories and task keys count)."""
        return self.n_shards * self.spec.student(track).dataset_epochs

    def cache_shard(self, round_: int) -> int:
        """The cache shard round ``round_`` trains on."""
        return round_ % self.n_shards


def read_yaml(path: Path) -> Any:
    """A job.yaml, through libyaml where PyYAML has it: the file lists every shard's records,
    and the pure-Python parser took 6x as long (0.23 s at 1,000 shards) on every `status`,
    `watch` frame and `jobs` line (bench/scale.py)."""
    return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def load_job(storage: Path, job_id: str) -> Job:
    paths = job_paths(storage, job_id)
    if not paths.spec.exists():
        raise JobNotFound(
            f"job {job_id!r} does not exist under {jobs_root(storage)}; `distillq jobs` lists jobs"
        )
    raw = read_yaml(paths.spec)
    s = raw["split"]
    split = Split(s["n_records"], s["eval_stride"], tuple(tuple(x) for x in s["shards"]))
    info = records.from_json(JobInfo, raw["info"], f"{paths.spec}: info")
    if info.cache_job:
        paths = job_paths(storage, job_id, info.cache_job)
    return Job(paths, spec_from_stored(raw["spec"]), split, info)


def list_jobs(storage: Path) -> list[str]:
    root = jobs_root(storage)
    if not root.exists():
        return []
    return sorted(d.name for d in root.iterdir() if (d / "job.yaml").exists())


def cache_sharing(storage: Path) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Which job reads which one's teacher cache: (reader → owner, owner → readers)."""
    owners: dict[str, str] = {}
    for j in list_jobs(storage):
        info = read_yaml(job_paths(storage, j).spec).get("info", {})
        if info.get("cache_job"):
            owners[j] = str(info["cache_job"])
    readers: dict[str, list[str]] = {}
    for reader, owner in owners.items():
        readers.setdefault(owner, []).append(reader)
    return owners, readers


def data_notes(job: Job) -> list[str]:
    """What enqueue did to the dataset, in lines for the user (empty when nothing)."""
    d = job.info.data
    notes = []
    if d.of_records:
        notes.append(f"a quick try: the first {d.records} of {d.of_records} records (max_records)")
    if d.skipped_lines:
        lines = d.first_skipped_lines
        more = ", ..." if d.skipped_lines > len(lines) else ""
        notes.append(
            f"skipped {d.skipped_lines} bad dataset line(s): {', '.join(map(str, lines))}{more}"
        )
    if d.truncated:
        notes.append(
            f"{d.truncated} of {d.records} records are longer than "
            f"{job.spec.max_length_key}={d.max_length} tokens and will be truncated "
            "(overlong: refuse stops instead)"
        )
    if d.no_target:
        notes.append(f"{d.no_target} records have no training target and will be dropped")
    return notes + alignment_notes(job)


def alignment_notes(job: Job) -> list[str]:
    """Which tracks learn across tokenizers, and how (said at enqueue)."""
    fp, t = job.info.fingerprints, job.spec.teacher
    out = []
    for s in job.spec.students:
        if fp.students[s.name].tokenizer == fp.tokenizer:
            continue
        if t is None or not t.top_k:
            how = "it learns the data's text through its own tokenizer (CE only)"
        else:
            wrote = ", on the responses the teacher writes" if t.generate else ""
            how = (
                "logit-level cross-tokenizer KD: the teacher's top-k is mapped onto its tokens "
                "by byte-aligned spans (the tokens it has whole take the teacher's mass, the "
                "rest stays in the tail; chain rule over merged tokens, prefix mass over split "
                f"ones), positions that do not align fall back to CE{wrote}; the report "
                "compares tracks in bits per byte"
            )
        out.append(f"track {s.name}: its tokenizer is not the teacher cache's, so {how}")
    return out
