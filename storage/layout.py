"""Every path of a job on shared storage, in one place (docs/DESIGN.md §4).

<storage>/jobs/<job_id>/
  job.yaml, dataset.jsonl            frozen spec + fingerprints, the dataset copied in
  teacher/shard-00003.h5 (+ .json)   verified cache shards (+ their stats); a from_job job reads its
                                     cache job's teacher/ instead (JobPaths.cache_root)
  teacher/eval.json                  the teacher's held-out loss
  teacher/eval.h5                    held-out samples as a served or generating teacher made them
  students/<track>/global/v0007/     a track's checkpoint after 7 merged rounds
  students/<track>/rounds/shard-00003/replica-0/   replica deltas until merged
  students/<track>/final/{adapter,merged,gguf}/
  failures/<task>.json               tasks that gave up, with the reason
  report.json, report.png, report.md
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from distillq.errors import DistillqError

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(kind: str, value: str) -> str:
    """Refuse ids and names that could escape their directory (``../``, ``/``, empty)."""
    if not _SAFE_NAME.match(value) or ".." in value:
        raise DistillqError(
            f"{kind} {value!r} is not allowed: use letters, digits, '.', '_' and '-' only "
            "(no '/', no '..', at most 128 characters)"
        )
    return value


def check_writable(storage: Path) -> None:
    """Refuse, in one line, a storage root this node cannot write: read-only, not permitted,
    or its parent missing. Checked before a command or a worker does anything, so nothing is
    half made."""
    fix = "point DISTILLQ_STORAGE (or --storage) at a writable directory that every node shares"
    try:
        storage.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=storage)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        why = {errno.EROFS: "is on a read-only filesystem", errno.EACCES: "is not writable here"}
        raise DistillqError(
            f"storage {storage} {why.get(e.errno or 0, f'cannot be written ({e.strerror})')}; {fix}"
        ) from None


@dataclass(frozen=True)
class JobPaths:
    """All paths of one job. Build with :func:`job_paths`; pure, touches no disk."""

    root: Path
    cache_root: Path | None = None
    """The ``teacher/`` directory of the job whose cache this one reads (``from_job``)."""

    @property
    def job_id(self) -> str:
        return self.root.name

    @property
    def spec(self) -> Path:
        return self.root / "job.yaml"

    @property
    def dataset(self) -> Path:
        return self.root / "dataset.jsonl"

    @property
    def teacher_dir(self) -> Path:
        return self.cache_root or self.root / "teacher"

    def shard(self, shard: int) -> Path:
        return self.teacher_dir / f"shard-{shard:05d}.h5"

    def aligned_shard(self, shard: int, tokenizer: str) -> Path:
        """A shard's targets mapped onto a student tokenizer's tokens (``tokenizer``: its
        fingerprint), written by the first replica that needs them (core/student/aligned.py)."""
        return self.root / "aligned" / tokenizer[:16] / f"shard-{shard:05d}.h5"

    def shard_stats(self, shard: int) -> Path:
        return self.teacher_dir / f"shard-{shard:05d}.json"

    @property
    def quarantine_dir(self) -> Path:
        """Cache files that failed their checksum, kept for inspection, never read again."""
        return self.teacher_dir / "quarantine"

    @property
    def teacher_eval(self) -> Path:
        return self.teacher_dir / "eval.json"

    @property
    def teacher_eval_cache(self) -> Path:
        """The held-out slice as the teacher made it (responses it wrote, or a served
        teacher's scores): written where the held-out eval cannot use the dataset alone."""
        return self.teacher_dir / "eval.h5"

    def track_dir(self, track: str) -> Path:
        return self.root / "students" / check_name("track name", track)

    def global_dir(self, track: str) -> Path:
        return self.track_dir(track) / "global"

    def global_version(self, track: str, version: int) -> Path:
        return self.global_dir(track) / f"v{version:04d}"

    def round_inflight(self, track: str) -> Path:
        """Which shard's round the track is running now (rounds of a track run in order)."""
        return self.track_dir(track) / "inflight.json"

    def round_dir(self, track: str, shard: int) -> Path:
        return self.track_dir(track) / "rounds" / f"shard-{shard:05d}"

    def replica_dir(self, track: str, shard: int, replica: int) -> Path:
        return self.round_dir(track, shard) / f"replica-{replica}"

    def replica_progress(self, track: str, shard: int, replica: int) -> Path:
        """In-round checkpoints of a replica (``step-NNNNNN/``); gone once the replica is saved."""
        return self.replica_dir(track, shard, replica) / "progress"

    def onpolicy_dir(self, track: str, round_: int) -> Path:
        """A round's on-policy files: kept after the merge (they are small, the report quotes
        them, and a finished round is never sampled again)."""
        return self.track_dir(track) / "onpolicy" / f"round-{round_:05d}"

    def onpolicy_samples(self, track: str, round_: int, part: int) -> Path:
        """What the student wrote in part ``part`` of a round (a cache file without targets)."""
        return self.onpolicy_dir(track, round_) / f"samples-{part}.h5"

    def onpolicy_scored(self, track: str, round_: int, part: int) -> Path:
        """The same samples with the teacher's targets (a cache file, like a teacher shard)."""
        return self.onpolicy_dir(track, round_) / f"scored-{part}.h5"

    def onpolicy_train_queued(self, track: str, round_: int) -> Path:
        """Marks the round's training chord queued (so two score tasks queue it once)."""
        return self.onpolicy_dir(track, round_) / "train-queued"

    def final_dir(self, track: str) -> Path:
        return self.track_dir(track) / "final"

    def gguf_dir(self, track: str) -> Path:
        """``<track>-<quant>.gguf`` files and the Ollama ``Modelfile``."""
        return self.final_dir(track) / "gguf"

    def student_eval(self, track: str) -> Path:
        return self.track_dir(track) / "eval.json"

    @property
    def failures_dir(self) -> Path:
        return self.root / "failures"

    def failure(self, task_key: str) -> Path:
        return self.failures_dir / f"{task_key}.json"

    @property
    def control(self) -> Path:
        """``pause`` / ``cancel`` state set by the user; tasks read it before doing work."""
        return self.root / "control.json"

    @property
    def finalize_claim(self) -> Path:
        return self.root / "finalize.claimed"

    @property
    def report(self) -> Path:
        return self.root / "report.json"

    @property
    def report_png(self) -> Path:
        return self.root / "report.png"

    @property
    def report_md(self) -> Path:
        """The report to read: baseline → final per track, the held-out curve, generations."""
        return self.root / "report.md"

    @property
    def trackio_dir(self) -> Path:
        """Trackio's store, shared by the storage's jobs (one database per job): ``trackio``
        reads its directory once per process, and a worker serves one storage."""
        return self.root.parent.parent / "trackio"

    @property
    def tracking_dir(self) -> Path:
        """Experiment trackers' files (``report_to``): ``tensorboard/<track>/`` event files."""
        return self.root / "tracking"


def sidecar(cache_file: Path) -> Path:
    """The stats file that marks a cache file (an on-policy round's) done and verifies it."""
    return cache_file.with_suffix(".json")


def jobs_root(storage: Path) -> Path:
    return storage / "jobs"


def job_paths(storage: Path, job_id: str, cache_job: str = "") -> JobPaths:
    """``cache_job``: the job whose teacher cache this one reads, if not its own."""
    cache = jobs_root(storage) / check_name("job id", cache_job) / "teacher" if cache_job else None
    return JobPaths(jobs_root(storage) / check_name("job id", job_id), cache)


def checks_memo(storage: Path, what: str) -> Path:
    """Results of slow enqueue checks that passed (``what``: peft), kept across jobs."""
    return storage / "cache" / f"{what}-checked.json"


def staging_dataset(storage: Path, token: str) -> Path:
    """Where enqueue streams a non-JSONL dataset into JSONL before its job directory exists."""
    return storage / "staging" / f"dataset-{token}.jsonl"


def models_root(storage: Path) -> Path:
    """Where ``distillq demo`` puts the models it builds, so every worker can load them."""
    return storage / "models"
