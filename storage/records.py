"""Typed records: what one stage hands the next, and what is kept on storage or in Redis.

Each record is a frozen dataclass with one writer and one reader (named in its docstring), so
mypy checks the scheduling instead of a dict whose keys are spelled in five files. On disk and
over Redis they stay JSON: ``to_json`` is ``asdict``; ``from_json`` validates through pydantic
(``distillq/typed.py``): it ignores keys it does not know (a newer writer) and fills fields an
older writer did not have from their defaults. A record missing a field with no default, or
holding a value of the wrong type, raises ``RecordError`` naming the file.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypedDict, TypeVar

from distillq import typed
from distillq.errors import RecordError
from distillq.storage.atomic import read_json, write_json

R = TypeVar("R")


def to_json(record: Any) -> dict[str, Any]:
    return dataclasses.asdict(record)


def from_json(cls: type[R], raw: Any, where: str) -> R:
    """Build ``cls`` from decoded JSON ``raw``; ``where`` names the source in errors."""
    from pydantic import ValidationError  # here: pydantic is paid for by readers only

    if not isinstance(raw, dict):
        raise RecordError(f"{where}: expected a JSON object for {cls.__name__}, got {raw!r:.60}")
    try:
        return typed.build(cls, raw)
    except ValidationError as e:
        err = e.errors()[0]
        if err["type"] == "missing" and len(err["loc"]) == 1:
            raise RecordError(
                f"{where}: {cls.__name__} has no {err['loc'][0]!r} (written by an older "
                "distillq?); `distillq resume` the job to redo that step"
            ) from None
        raise RecordError(
            f"{where}: {typed.where(err['loc'])} of {cls.__name__}: {err['msg']}; "
            "`distillq resume` the job to redo that step"
        ) from None


def read_if_exists(cls: type[R], path: Path) -> R | None:
    return read(cls, path) if path.exists() else None


def write(path: Path, record: Any) -> None:
    write_json(path, to_json(record))


def read(cls: type[R], path: Path) -> R:
    return from_json(cls, read_json(path), str(path))


# --- teacher stage ------------------------------------------------------------------------


@dataclass(frozen=True)
class EndpointStats:
    """What an endpoint teacher's pool met over a shard (``core/teacher/endpoint.py::PoolStats``)."""

    requests: int = 0
    retries: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    """Retried failures by kind: "429", "503", "timeout", "connect", ..."""
    last_error: str = ""
    """The last failure, as ``<url>: <what>`` (never carries the key)."""


@dataclass(frozen=True)
class ShardStats:
    """``teacher/shard-NNNNN.json``, the sidecar that marks a shard done.

    Writer: ``storage.cache.write_stats``; reader: ``storage.cache.read_stats`` (or
    ``verified``, which also checks the file against ``sha256`` and ``bytes``).
    """

    shard: int
    samples: int
    tokens: int
    target_positions: int
    seconds: float
    tokens_per_s: float
    started_at: float
    finished_at: float
    sha256: str = ""
    """The shard file's; ``storage.cache.write_stats`` fills it and ``bytes``."""
    bytes: int = 0
    k: int = 0
    truncated: int = 0
    dropped_no_target: int = 0
    source: str = "local"
    """Where the targets came from: "local", or "endpoint <dialect> <url,...>"."""
    targets: dict[str, int] = field(default_factory=dict)
    """Samples by kind of target: scored, generated (with the teacher's top-k), generated_text
    (the teacher's text only: sequence-level KD)."""
    k_obtained: float | None = None
    """Mean teacher entries per target position actually obtained (a server may give < k)."""
    fallback_positions: int = 0
    """Target positions with no teacher distribution, trained with CE on the token."""
    dropped_entries: int = 0
    """Server top-k entries whose token text names no single id (left in the tail)."""
    endpoint: EndpointStats | None = None
    """An endpoint teacher's requests, retries by kind and last error (None: a local one)."""
    padding: float | None = None
    """Share of the local teacher's padded batch cells that were padding."""
    padding_ungrouped: float | None = None
    """The same, had its batches been consecutive samples (``teacher.group_by_length`` off)."""


@dataclass(frozen=True)
class Outputs:
    """What a finished track left on storage: paths, or why it has no GGUF.

    Writer: ``core/export/outputs.py`` (``export_track``, ``export_gguf_outputs``); kept in
    the track's ``EvalResult`` and the report. One field per GGUF type the export writes."""

    adapter: str | None = None
    merged: str | None = None
    gguf_f16: str | None = None
    gguf_q8_0: str | None = None
    gguf_f32: str | None = None
    modelfile: str | None = None
    gguf_skipped: str | None = None
    """Why no GGUF was written (a model llama.cpp cannot take, no merged model)."""

    def entries(self) -> list[tuple[str, str]]:
        """The outputs there are, by name, in field order."""
        return [(k, v) for k, v in dataclasses.asdict(self).items() if v]

    def without_gguf(self) -> Outputs:
        """These outputs less what a GGUF export wrote, before it writes them again."""
        return Outputs(adapter=self.adapter, merged=self.merged)

    def with_(self, other: Outputs) -> Outputs:
        """These outputs with every output ``other`` has."""
        return dataclasses.replace(self, **{k: v for k, v in other.entries()})


@dataclass(frozen=True)
class Generation:
    """A model's greedy continuation of one held-out prompt, beside the data's own."""

    prompt: str
    reference: str
    text: str


@dataclass(frozen=True)
class OnPolicyExample:
    """A held-out prompt continued greedily by the student before and after, and the teacher."""

    prompt: str
    before: str
    after: str
    teacher: str = ""


@dataclass(frozen=True)
class OnPolicyRound:
    """What the student wrote in one on-policy round, and how the teacher scored it."""

    round: int
    version: int
    samples: int
    teacher_logprob: float | None
    """The teacher's mean log-prob per token of the round's samples (where it listed them)."""
    student_text: str = ""
    """The first sample's continuation."""


@dataclass(frozen=True)
class OnPolicyEval:
    """An on-policy track on held-out prompts: its greedy continuations, scored by the teacher,
    before training and after (``core/onpolicy.py::heldout``; in the student's eval.json)."""

    teacher_logprob_before: float | None
    teacher_logprob_after: float | None
    """The teacher's mean log-prob per token of the student's continuations: what on-policy
    distillation raises."""
    reverse_kl_before: float | None
    reverse_kl_after: float | None
    """KL(student ‖ teacher) per token on those continuations (teacher's top-k + tail)."""
    positions: int = 0
    unlisted: int = 0
    """Positions whose token the teacher did not list (a server's top-k): left out of the mean."""
    examples: list[OnPolicyExample] = field(default_factory=list)
    rounds: list[OnPolicyRound] = field(default_factory=list)
    """Filled by the report from the rounds' files."""


@dataclass(frozen=True)
class EvalResult:
    """Held-out loss of a model: ``teacher/eval.json`` and ``students/<t>/final/eval.json``.

    Writer: ``core.stages`` (teacher_eval, finalize); reader: ``read_eval`` via the report.
    """

    loss: float
    tokens: int
    version: int | None = None  # the student's checkpoint version it was measured on
    outputs: Outputs | None = None  # exported adapter / merged model / GGUF paths
    baseline: float | None = None
    """The untrained student's loss on the same samples (students only)."""
    samples: int = 0
    """Held-out samples the loss is measured on."""
    bytes: int = 0
    """UTF-8 bytes of the target tokens the loss is over (0: unknown, or the loss left some
    targets out): nats per token × tokens ÷ bytes is comparable across tokenizers."""
    generations: list[Generation] = field(default_factory=list)
    """Greedy continuations of the first held-out prompts (``core.evaluate.generate``)."""
    on_policy: OnPolicyEval | None = None
    """An on-policy track's held-out measure (students only)."""

    @property
    def bits_per_byte(self) -> float | None:
        if not self.bytes or self.loss != self.loss:
            return None
        return self.loss * self.tokens / self.bytes / math.log(2)


# --- student stage ------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplicaStats:
    """``rounds/shard-NNNNN/replica-R/stats.json``: a replica's finished work.

    Writer: ``storage.checkpoints.write_replica``; reader: ``checkpoints.replica_stats``.
    ``curve`` holds (global step, loss, CE, KD) points; it is left out of task results.
    """

    track: str
    shard: int
    replica: int
    start_version: int
    steps: int
    tokens: int
    target_positions: int
    seconds: float
    tokens_per_s: float
    started_at: float
    finished_at: float
    curve: list[list[float]] = field(default_factory=list)
    resumed_from: int = 0
    """Steps taken from an in-round checkpoint of an earlier, interrupted delivery."""
    padding: float | None = None
    """Share of the replica's padded batch cells that were padding."""
    padding_ungrouped: float | None = None
    """The same, had its batches been consecutive samples (``group_by_length`` off)."""

    def without_curve(self) -> ReplicaStats:
        return dataclasses.replace(self, curve=[])


@dataclass(frozen=True)
class ReplicaProgress:
    """``rounds/shard-NNNNN/replica-R/progress/step-NNNNNN/meta.json``: where a replica's
    in-round checkpoint stands, so a redelivered replica continues instead of starting over.

    Writer: ``core.student`` (via ``checkpoints.write_progress``); reader: ``core.student``.
    """

    start_version: int
    steps: int
    """Optimizer steps this replica had taken."""
    epoch: int
    batch: int
    """Batches of ``epoch`` done (the next one to train is ``batch`` in that epoch's order)."""
    tokens: int
    positions: int
    curve: list[list[float]] = field(default_factory=list)


@dataclass(frozen=True)
class RoundInfo:
    """One merged round, kept in the checkpoint's ``meta.json``."""

    shard: int
    queued_at: float | None
    merged_at: float
    replicas: list[ReplicaStats]
    curve: list[list[float]] = field(default_factory=list)
    heldout: float | None = None
    """Loss on the first ``curve_samples`` held-out samples after this merge."""


@dataclass(frozen=True)
class CheckpointMeta:
    """``global/vNNNN/meta.json``: what a track's global version holds.

    Writer: ``storage.checkpoints.write_version``; reader: ``checkpoints.latest``.
    """

    track: str
    step: int
    merged_shards: list[int]
    rounds: list[RoundInfo]
    version: int = 0
    heldout_start: float | None = None
    """Loss of the untrained student on the held-out curve's samples (before round 1)."""


@dataclass(frozen=True)
class RoundMarker:
    """``students/<t>/round-inflight.json``: the one round of a track in flight.

    Writer and reader: ``tasks.pipeline`` (advance, under the track lock).
    """

    shard: int
    queued_at: float


# --- job control and failures --------------------------------------------------------------


@dataclass(frozen=True)
class ControlRecord:
    """``control.json``: a user's pause or cancel. Writer and reader: ``core.control``."""

    state: str
    at: float
    reason: str = ""


@dataclass(frozen=True)
class FailureRecord:
    """``failures/<task key>.json``: a task that failed for good.

    Writer: ``tasks.base.JobTask.on_failure``; reader: ``core.status`` (and `resume`, which
    clears them).
    """

    task: str
    key: str
    error: str
    at: float
    task_id: str = ""
    args: list[Any] = field(default_factory=list)
    traceback: list[str] = field(default_factory=list)


class ProgressFields(TypedDict, total=False):
    """What a stage reports between batches; ``Progress`` adds the task key and the time."""

    tokens_per_s: float
    samples: int
    of: int
    tokens: int
    step: int
    steps: int
    loss: float
    ce: float
    kd: float
    endpoint: str
    """An endpoint teacher's URL(s)."""
    last_error: str
    """The last failure the endpoint pool retried (``<url>: HTTP 503``)."""
    phase: str
    """An on-policy round's phase: sample or score."""


# A stage's progress callback (tasks/base.py publishes it).
OnProgress = Callable[[ProgressFields], None]


class Progress(ProgressFields):
    """Live progress of a running task, in Redis (``keys.progress``): what the stage reported,
    with the task key and the time. A TypedDict, so it is the stage's own fields, not a copy.

    Writer: ``tasks.base.JobTask.progress``; reader: ``core.status``. Teacher tasks fill
    samples/of/tokens, replicas step/steps/loss (with its CE and KD parts).
    """

    task: str
    at: float
    node: str
    """The worker node running it (its -n hostname)."""


@dataclass(frozen=True)
class Killed:
    """A delivery whose pool process died by SIGKILL (``keys.killed``): written by the worker's
    main process, which outlives the child, and read when the work is delivered again.

    Writer: ``tasks.base.KillAwareRequest``; reader: ``tasks.base.JobTask.attempt``."""

    node: str
    at: float
    limit_mb: float
    """The memory the node's worker may use (its cgroup's limit, else the machine's RAM)."""
    peak_mb: float | None
    """The cgroup's high-water mark (None without a cgroup)."""
    oom: bool | None
    """The cgroup counted an out-of-memory kill meanwhile (None: no cgroup to ask)."""


# --- the job -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudentFingerprint:
    model: str
    tokenizer: str


@dataclass(frozen=True)
class Fingerprints:
    tokenizer: str
    students: dict[str, StudentFingerprint] = field(default_factory=dict)
    teacher: str = ""
    vocab_size: int | None = None
    dataset_sha256: str = ""


@dataclass(frozen=True)
class DataNotes:
    """What enqueue did to the dataset: skipped lines, truncated records."""

    records: int = 0
    skipped_lines: int = 0
    first_skipped_lines: list[int] = field(default_factory=list)
    max_length: int = 0
    truncated: int = 0
    no_target: int = 0
    of_records: int = 0
    """The dataset's records where ``max_records`` kept only the first ``records`` (else 0)."""


@dataclass(frozen=True)
class JobInfo:
    """The ``info`` part of ``job.yaml``, frozen at enqueue.

    Writer: ``core.job.create_job``; reader: ``core.job.load_job``.
    """

    fingerprints: Fingerprints
    total_steps: dict[str, int]
    data: DataNotes = field(default_factory=DataNotes)
    created: str = ""
    teacher_dialect: str = ""
    """An endpoint teacher's dialect, as the enqueue probe resolved ``auto``."""
    teacher_quantization: str = ""
    """A GGUF teacher's weight type (q8_0, q4_k_m...), as its file says."""
    cache_job: str = ""
    """The job whose teacher cache this job reads (``teacher: {from_job: ...}``); "" when it
    owns its own."""


# --- task results (JSON over the result backend) --------------------------------------------

SkipReason = Literal["merged", "regenerate", "missing"]


@dataclass(frozen=True)
class ReplicaOutcome:
    """What a ``train_replica`` delivery did; the chord hands these to ``merge_round``.

    Writer: ``core.stages.replica``; reader: ``tasks.student.merge_round``. ``skipped``:
    "merged" (a duplicate delivery after the merge), "regenerate" (this delivery quarantined
    a corrupt cache) or "missing" (the cache is being regenerated).
    """

    skipped: SkipReason | None = None
    stats: ReplicaStats | None = None

    def to_json(self) -> dict[str, Any]:
        if self.stats is not None:
            return to_json(self.stats.without_curve())
        return {"skipped": self.skipped}

    @staticmethod
    def from_json(raw: dict[str, Any]) -> ReplicaOutcome:
        if raw.get("skipped"):
            return ReplicaOutcome(skipped=raw["skipped"])
        return ReplicaOutcome(stats=from_json(ReplicaStats, raw, "replica result"))
