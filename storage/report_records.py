"""Typed records of the report: what ``finalize`` and ``distillq report`` write to
``report.json`` (writer: ``core/report/report.py``; readers: the CLI, the demo, the markdown).
JSON like every record (``storage/records.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from distillq.storage.records import Generation, OnPolicyEval, Outputs


@dataclass(frozen=True)
class TeacherSummary:
    model: str
    eval_loss: float | None
    tokens: int
    tokens_per_s: float | None
    generations: list[Generation] = field(default_factory=list)
    padding: list[float] | None = None
    """(share of the batches' cells that were padding, the share had batches been consecutive)."""
    quantization: str = ""
    """A GGUF teacher's weight type (q8_0, q4_1...); "" for a transformers or served one."""
    eval_bpb: float | None = None
    """Held-out bits per byte (``EvalResult.bits_per_byte``)."""


@dataclass(frozen=True)
class CacheSummary:
    bytes: int
    target_positions: int
    bytes_per_position: float | None
    k: int
    sources: list[str] = field(default_factory=list)
    """Where the shards' targets came from ("local", "endpoint llama_cpp http://...")."""
    targets: dict[str, int] = field(default_factory=dict)
    """Samples by kind of target over all shards (scored, generated, generated_text)."""
    shard_targets: dict[str, list[int]] = field(default_factory=dict)
    """The shards holding each kind of target."""
    fallback_positions: int = 0
    """Positions with no teacher distribution (trained with CE on their token)."""
    method: str = "topk"
    """``topk`` (k = the k most likely tokens) or ``sampled`` (k = the draws per position)."""
    cache_job: str = ""
    """The job that owns the cache, where this job reused another's (``teacher.from_job``)."""


@dataclass(frozen=True)
class LossSummary:
    kind: str
    alpha: float
    on_policy_kind: str = ""
    """An on-policy track: the divergence on its own samples (α = 0 there)."""


@dataclass(frozen=True)
class AlignmentSummary:
    """A track of another tokenizer than the teacher cache's: its target positions by how they
    were aligned (core/align), and what its mapped copy of the cache costs."""

    exact: int
    chain: int
    split: int
    none: int
    bytes: int
    """Bytes of the track's aligned shard files."""

    @property
    def positions(self) -> int:
        return self.exact + self.chain + self.split + self.none


@dataclass(frozen=True)
class StudentSummary:
    model: str
    method: str
    replicas: int
    loss: LossSummary
    eval_loss: float | None
    version: int
    steps: int
    tokens: int
    tokens_per_s: float | None
    first_step_at: float | None = None
    outputs: Outputs | None = None
    baseline_loss: float | None = None
    """Held-out loss of the untrained student: what ``eval_loss`` is to be read against."""
    heldout_curve: list[list[float]] = field(default_factory=list)
    """(optimizer step, held-out loss on the curve's samples) after each merged round."""
    generations: list[Generation] = field(default_factory=list)
    padding: list[float] | None = None
    """(share of the batches' cells that were padding, the share had batches been consecutive)."""
    alignment: AlignmentSummary | None = None
    """Where the track's tokenizer is not the teacher cache's: how its positions aligned."""
    eval_bpb: float | None = None
    """Held-out bits per byte: what compares tracks of different tokenizers."""
    on_policy: OnPolicyEval | None = None
    """An on-policy track: the teacher's log-prob of its own text before and after, per round."""


def in_bits_per_byte(students: dict[str, StudentSummary], teacher: TeacherSummary | None) -> bool:
    """Whether the CE gap is measured in bits per byte: where every model has them (tracks of
    another tokenizer compare only so), else in nats per token."""
    return all(st.eval_bpb is not None for st in students.values()) and (
        teacher is None or teacher.eval_bpb is not None
    )


@dataclass(frozen=True)
class Report:
    """``report.json``, written last by finalize: it marks the job done.

    Writer: ``core.report.write``; readers: `distillq report`, the demo, `status` (its path).
    """

    job_id: str
    mode: str
    records: int
    eval_records: int
    shards: int
    cache: CacheSummary
    students: dict[str, StudentSummary]
    teacher: TeacherSummary | None = None
    vocab_size: int | None = None
    wall_seconds: float | None = None
    first_shard_done_at: float | None = None
    last_shard_done_at: float | None = None
    eval_samples: int = 0
    """Held-out samples the losses are measured on (records with a target left)."""
    warnings: list[str] = field(default_factory=list)
    """What makes a number above hard to trust: too few held-out samples, a track that
    learned nearly nothing."""
    ce_track: str | None = None
    """The CE-only track (α = 1) the others are measured against, where there is one."""
    ce_gap_closed: dict[str, float] = field(default_factory=dict)
    """Per distilled track: the share of the held-out gap between the CE-only track and the
    teacher that it closed, (CE − track) / (CE − teacher)."""
