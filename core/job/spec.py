"""The job spec: typed, frozen records of what a job is (``core/job/load.py`` reads them).

The YAML shape is the user-facing contract (issue 2); fields can be added, never renamed::

    name: my-job
    dataset: data/train.jsonl
    shards: 4
    mode: teacher_student            # teacher_student | data_parallel | hybrid
    eval_fraction: 0.05
    teacher: {model: path/or/hub-id, top_k: 64, temperature: 1.0, batch_size: 4, max_length: 512}
    # or a served teacher: {endpoint: http://gpu-box:8000/v1, model: served-name, top_k: 20,
    #   api_key_env: VAR, max_concurrent: 8, dialect: auto}   (docs/DESIGN.md §4b)
    # and for prompt-only data: teacher.generate: {max_new_tokens: 128, temperature: 0.7, seed: 0}
    # a GGUF (model: t.gguf) or an Ollama tag (model: "ollama:qwen2.5:7b"), run by llama.cpp;
    # another job's cache: teacher: {from_job: JOB_ID} (completed from it at enqueue)
    students:                        # [] builds the teacher cache only
      - {name: small, model: path/or/hub-id, peft: {method: lora, r: 8, alpha: 16}, replicas: 1,
         lr: 1.0e-3, epochs: 1, dataset_epochs: 1, batch_size: 4}
    loss: {kind: forward_kl, alpha: 0.5, temperature: 1.0}
    overlong: truncate               # truncate | refuse samples over the token limit
    columns: {prompt: instruction, response: output}   # the dataset's own column names
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Tag

from distillq import typed
from distillq.core.targets import registry as targets
from distillq.errors import DistillqError, SpecError
from distillq.storage.layout import check_name

# Every spec record refuses keys it does not know; numbers are accepted where text is meant
# (a model named 7 is "7"), and YAML's `1e-4` (a string to YAML 1.1) is read as a float.
_STRICT = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

Mode = Literal["teacher_student", "data_parallel", "hybrid"]
LossKind = Literal["forward_kl", "reverse_kl", "jsd"]
Overlong = Literal["truncate", "refuse"]
Dialect = Literal["auto", "vllm", "llama_cpp", "openai", "text"]
StudentDtype = Literal["float32", "bfloat16"]
TargetMethod = Literal["topk", "sampled"]
"""The names in ``core/targets/registry.py``."""
TeacherDtype = Literal["auto", "float32", "bfloat16"]
OnPolicyEstimator = Literal["listed", "token"]


@dataclass(frozen=True)
class GenerateSpec:
    """The teacher writes the responses: for records with a prompt and no response."""

    __pydantic_config__ = _STRICT

    max_new_tokens: int = 128
    temperature: float = 1.0
    """Sampling temperature of the generation (0: greedy). The stored targets are the teacher's
    raw distribution at ``teacher.temperature``, never the sampling-processed one."""
    top_p: float = 1.0
    seed: int = 0
    """Seeds every draw: a retried shard generates the same text."""
    n: int = 1
    """Responses per prompt (each becomes a sample of its own)."""

    def __post_init__(self) -> None:
        _positive("teacher.generate.max_new_tokens", self.max_new_tokens)
        _positive("teacher.generate.n", self.n)
        if self.temperature < 0:
            raise SpecError(
                f"teacher.generate.temperature={self.temperature} must be 0 (greedy) or more"
            )
        if not 0.0 < self.top_p <= 1.0:
            raise SpecError(f"teacher.generate.top_p={self.top_p} must lie in (0, 1]")


@dataclass(frozen=True)
class _Teacher:
    """What every teacher takes: a local model (``LocalTeacherSpec``) or a served one
    (``ServedTeacherSpec``, chosen by ``endpoint``)."""

    __pydantic_config__ = _STRICT
    is_endpoint: ClassVar[bool] = False

    model: str
    """Local directory of a causal LM (or a hub id already in the Hugging Face cache), a
    ``.gguf`` file, or ``ollama:NAME[:TAG]`` (a model in Ollama's store, read from disk); with
    ``endpoint``, the model's name on the server."""
    top_k: int = 64
    """Teacher tokens kept per target position (``target_method: topk``)."""
    target_method: TargetMethod = "topk"
    """``topk``: the k most likely tokens, the rest as one tail bucket (biased, deterministic).
    ``sampled``: ``samples`` tokens drawn from the teacher's distribution per position, stored
    as unique ids with counts: the student's loss is an unbiased estimate of the dense one
    (Random-Sampling KD, Anshumann et al., ACL 2025; docs/DESIGN.md §6b). Local teachers only."""
    samples: int | None = None
    """Draws per position with ``target_method: sampled`` (default 12, at most 255)."""
    proposal_temperature: float | None = None
    """Temperature of the distribution the draws come from (default: ``temperature``, the
    teacher's own). Hotter spreads the draws over more tokens; importance weights keep the
    estimate unbiased."""
    seed: int = 0
    """Seeds the draws of ``sampled``: the same record always draws the same tokens."""
    temperature: float = 1.0
    """τ at which the stored log-probs are normalised (over the full vocabulary)."""
    batch_size: int = 4
    max_length: int = 512
    """Samples longer than this (in tokens) are truncated."""
    generate: GenerateSpec | None = None
    group_by_length: bool = True
    """Score samples in batches of similar length (less padding); the cache keeps record order."""
    tokenizer: str | None = None
    """The tokenizer samples are tokenized with, where the teacher brings none of its own:
    an endpoint or GGUF teacher (default: the first student's model, else the GGUF's own)."""
    from_job: str | None = None
    """The job whose cache this teacher is: set by enqueue from ``teacher: {from_job: ID}``
    (the rest of the teacher is that job's, checked against what the spec says)."""

    def __post_init__(self) -> None:
        _positive("teacher.top_k", self.top_k)
        _positive("teacher.batch_size", self.batch_size)
        _positive("teacher.max_length", self.max_length)
        _positive("teacher.temperature", self.temperature)
        targets.check(self)

    @property
    def is_gguf(self) -> bool:
        """Run by llama.cpp in process (``core/teacher/gguf.py``), not by transformers."""
        return not self.is_endpoint and (
            self.model.startswith("ollama:") or self.model.lower().endswith(".gguf")
        )

    @property
    def width(self) -> int:
        """Columns of the cache's target datasets: k, or the draws (unique ids fit in them)."""
        return targets.width(self)


@dataclass(frozen=True)
class LocalTeacherSpec(_Teacher):
    """A model every teacher node loads: transformers, or llama.cpp for a GGUF."""

    dtype: TeacherDtype = "auto"
    """Compute dtype of a transformers teacher: ``auto`` takes bfloat16 on a GPU and on a CPU
    with native bfloat16 (avx512_bf16 or AMX), else float32. A GGUF runs at its own types."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tokenizer is not None and not self.is_gguf:
            raise SpecError(
                f"teacher.tokenizer={self.tokenizer} applies to a GGUF or endpoint teacher; a "
                "transformers teacher brings its own: remove teacher.tokenizer"
            )
        if self.dtype != "auto" and self.is_gguf:
            raise SpecError(
                f"teacher.dtype={self.dtype} applies to a transformers teacher; a GGUF runs at "
                "its own quantization: remove teacher.dtype"
            )


@dataclass(frozen=True)
class ServedTeacherSpec(_Teacher):
    """A server that already serves the teacher (vLLM, llama.cpp, an OpenAI-style API)."""

    is_endpoint: ClassVar[bool] = True

    endpoint: tuple[str, ...] = ()
    """Base URL(s) of a server that already serves the teacher (``http://host:8000/v1``);
    several replicas of one model share the requests."""
    api_key_env: str | None = None
    """The environment variable that holds the endpoint's API key (never the key itself)."""
    max_concurrent: int = 8
    """Requests in flight per endpoint, per teacher task."""
    timeout_s: float = 120.0
    retries: int = 8
    """Attempts per request on connection errors, timeouts, 429 and 5xx (exponential backoff)."""
    retry_budget_s: float = 300.0
    """Longest a request keeps retrying before the shard task fails into the task retry path."""
    dialect: Dialect = "auto"
    """How the server returns log-probs: vllm (prompt_logprobs), llama_cpp (llama-cpp-python's
    echo + logprobs), openai (legacy completions, echo), text (no log-probs: generation only,
    sequence-level KD); auto asks the server."""

    def __post_init__(self) -> None:
        _positive("teacher.max_concurrent", self.max_concurrent)
        _positive("teacher.timeout_s", self.timeout_s)
        _positive("teacher.retries", self.retries)
        for url in self.endpoint:
            if not url.startswith(("http://", "https://")):
                raise SpecError(
                    f"teacher.endpoint {url!r} must be an http(s) URL such as http://host:8000/v1"
                )
        if self.temperature != 1.0:
            raise SpecError(
                f"teacher.temperature={self.temperature} with an endpoint: servers return "
                "log-probs at τ = 1 and only their top-k, which cannot be renormalised at "
                "another τ; set teacher.temperature: 1.0"
            )
        super().__post_init__()
        if self.dialect == "text" and self.generate is None:
            raise SpecError(
                "teacher.dialect: text gives no log-probs, so it cannot score responses: add "
                "teacher.generate (the teacher writes responses, the student learns its text)"
            )


def _teacher_kind(raw: Any) -> str:
    if isinstance(raw, dict):
        return "served" if raw.get("endpoint") else "local"
    return "served" if isinstance(raw, ServedTeacherSpec) else "local"


TeacherSpec = LocalTeacherSpec | ServedTeacherSpec
"""A teacher spec: local or served, told apart by ``endpoint`` (a tagged union)."""
_TeacherField = Annotated[
    Annotated[LocalTeacherSpec, Tag("local")] | Annotated[ServedTeacherSpec, Tag("served")],
    Discriminator(_teacher_kind),
]


class PeftSpec(BaseModel):
    """A student's adapter: ``method`` (lora, prefix, prompt, ia3, adaption_prompt, any peft
    type, or full) and that method's own options, passed to its peft config."""

    model_config = ConfigDict(frozen=True, extra="allow", coerce_numbers_to_str=True)

    method: str = "lora"

    @property
    def options(self) -> dict[str, Any]:
        """The method's options (everything but ``method``)."""
        return dict(self.model_extra or {})

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, **self.options}


@dataclass(frozen=True)
class LossSpec:
    __pydantic_config__ = _STRICT

    kind: LossKind = "forward_kl"
    """D(teacher ‖ student): forward_kl, reverse_kl or jsd (generalised JSD with ``beta``)."""
    alpha: float = 0.5
    """Weight of hard-label CE; (1 − alpha) weighs the distillation term."""
    temperature: float | None = None
    """τ of the KD term; must equal the teacher cache's τ (default: that τ)."""
    beta: float = 0.5
    """Mixture weight of the generalised JSD (ignored by the KLs)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise SpecError(f"loss.alpha={self.alpha} must lie in [0, 1]; 1 means CE only")
        if not 0.0 < self.beta < 1.0:
            raise SpecError(f"loss.beta={self.beta} must lie strictly between 0 and 1")
        if self.temperature is not None:
            _positive("loss.temperature", self.temperature)


@dataclass(frozen=True)
class OnPolicySpec:
    """On-policy distillation (GKD): the student samples continuations of the round's prompts,
    the teacher scores them, and the student learns on its own tokens (docs/DESIGN.md §6c)."""

    __pydantic_config__ = _STRICT

    fraction: float = 1.0
    """GKD's λ: the share of each round's batches built from the student's own samples; the
    rest come from the teacher cache."""
    max_new_tokens: int = 128
    temperature: float = 1.0
    """The student's sampling temperature (0: greedy)."""
    top_p: float = 1.0
    samples_per_prompt: int = 1
    seed: int = 0
    """Seeds every draw, per (round, record): a redelivered task writes the same samples."""
    chunks: int = 1
    """Pieces each replica's prompts are sampled and scored in: with more than one, the
    teacher scores a piece while the student samples the next (a task per piece and phase)."""
    estimator: OnPolicyEstimator = "listed"
    """How the loss on the student's own samples is taken: ``listed``, the divergence over the
    teacher's top-k, the sampled token and the tail (exact for those buckets); ``token``, the
    reverse KL estimated at the sampled token alone (log s(y) − log p(y), the recipe of the
    on-policy distillation reports; reverse KL only)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise SpecError(
                f"on_policy.fraction={self.fraction} must lie in (0, 1]: the share of a round's "
                "batches the student samples itself (remove on_policy for none)"
            )
        _positive("on_policy.max_new_tokens", self.max_new_tokens)
        _positive("on_policy.samples_per_prompt", self.samples_per_prompt)
        _positive("on_policy.chunks", self.chunks)
        if self.temperature < 0:
            raise SpecError(f"on_policy.temperature={self.temperature} must be 0 (greedy) or more")
        if not 0.0 < self.top_p <= 1.0:
            raise SpecError(f"on_policy.top_p={self.top_p} must lie in (0, 1]")


@dataclass(frozen=True)
class StudentSpec:
    __pydantic_config__ = _STRICT

    name: str
    model: str
    """Local directory (or a cached hub id); must share the teacher's tokenizer."""
    peft: PeftSpec = field(default_factory=PeftSpec)
    """``method`` (lora, prefix, prompt, ia3, adaption_prompt, any peft type, or full) + its options."""
    replicas: int = 1
    """R: replicas that each train on 1/R of a shard, then merge (local SGD outer step)."""
    lr: float = 1e-3
    epochs: int = 1
    """Passes over each shard within its round (per-shard epochs; what the HF Trainer calls
    ``num_train_epochs`` is ``dataset_epochs``)."""
    dataset_epochs: int = 1
    """Passes over the whole dataset: the rounds walk every shard again, in the same order,
    from the cache (no teacher work), E times. What other trainers call epochs."""
    batch_size: int = 4
    outer_lr: float = 1.0
    """Step size of the merge: global += outer_lr · mean(replica deltas)."""
    warmup_steps: int = 10
    weight_decay: float = 0.0
    seed: int = 0
    loss: LossSpec | None = None
    """Overrides the job's loss for this track (e.g. alpha: 1.0 for a CE-only baseline)."""
    checkpoint_every: float = 300.0
    """Seconds of training between a replica's in-round checkpoints: a killed or cancelled
    replica redoes at most this much when it is delivered again."""
    checkpoint_every_steps: int = 0
    """Optimizer steps between in-round checkpoints instead of seconds (0: use seconds)."""
    grad_accum: int = 1
    """Micro-batches of ``batch_size`` per optimizer step: the step sees
    ``grad_accum × batch_size`` samples, weighted by target positions as one batch would be."""
    gradient_checkpointing: bool = False
    """Recompute the model body's activations in the backward: less memory, ~30% more time."""
    dtype: StudentDtype = "float32"
    """Compute dtype of the forward and backward: float32, or bfloat16 under autocast (the
    weights and optimizer stay float32; where the device has no bfloat16, the replica stops
    with one line that says so)."""
    max_grad_norm: float = 1.0
    """Clip the gradient's global norm to this (0: no clipping)."""
    group_by_length: bool = True
    """Batch samples of similar length together (less padding); the batch order stays seeded."""
    on_policy: OnPolicySpec | None = None
    """Learn on the student's own samples, scored by the teacher (GKD); None: off-policy."""

    def __post_init__(self) -> None:
        _safe("track name", self.name)
        _positive(f"students[{self.name}].replicas", self.replicas)
        _positive(f"students[{self.name}].epochs", self.epochs)
        _positive(f"students[{self.name}].dataset_epochs", self.dataset_epochs)
        _positive(f"students[{self.name}].batch_size", self.batch_size)
        _positive(f"students[{self.name}].lr", self.lr)
        _positive(f"students[{self.name}].outer_lr", self.outer_lr)
        _positive(f"students[{self.name}].checkpoint_every", self.checkpoint_every)
        _positive(f"students[{self.name}].grad_accum", self.grad_accum)
        if self.max_grad_norm < 0:
            raise SpecError(
                f"students[{self.name}].max_grad_norm={self.max_grad_norm} must be 0 (no "
                "clipping) or more"
            )
        if self.checkpoint_every_steps < 0:
            raise SpecError(
                f"students[{self.name}].checkpoint_every_steps={self.checkpoint_every_steps} "
                "must be 0 (use seconds) or more"
            )

    @property
    def method(self) -> str:
        return self.peft.method.lower()

    @property
    def parts(self) -> int:
        """Parts of an on-policy round (a sample and a score task each): ``chunks`` per
        replica; part p belongs to replica p // chunks. 0 for an off-policy track."""
        return self.replicas * self.on_policy.chunks if self.on_policy is not None else 0

    def parts_of(self, replica: int) -> range:
        """The parts whose samples replica ``replica`` trains on."""
        n = self.on_policy.chunks if self.on_policy is not None else 0
        return range(replica * n, (replica + 1) * n)


@dataclass(frozen=True)
class JobSpec:
    __pydantic_config__ = _STRICT

    name: str
    dataset: str
    students: tuple[StudentSpec, ...]
    shards: int = 4
    mode: Mode = "teacher_student"
    eval_fraction: float = 0.05
    teacher: _TeacherField | None = None
    loss: LossSpec = field(default_factory=LossSpec)
    max_length: int = 512
    """Token limit of samples when there is no teacher (data_parallel)."""
    overlong: Overlong = "truncate"
    """Samples over the token limit: ``truncate`` them (counted at enqueue) or ``refuse`` the job."""
    seed: int = 0
    report_to: tuple[str, ...] = ()
    """Experiment trackers to log to, by name (the HF Trainer's key): tensorboard, mlflow."""
    max_records: int | None = None
    """A quick try: only the dataset's first N records (`enqueue --max-records N`)."""
    columns: dict[str, str] = field(default_factory=dict)
    """The dataset's own column names for our fields, e.g. ``{prompt: instruction, response:
    output}`` (Alpaca); fields: text, prompt, response, messages."""
    curve_samples: int = 32
    """Held-out samples evaluated after each merged round, for the report's held-out curve
    (bounded so a merge stays cheap); 0 turns the curve off."""

    def __post_init__(self) -> None:
        _safe("job name", self.name)
        unknown = set(self.columns) - {"text", "prompt", "response", "messages"}
        if unknown:
            raise SpecError(
                f"columns maps unknown fields {sorted(unknown)}: map text, prompt, response "
                "or messages to your column names, e.g. columns: {prompt: instruction}"
            )
        if self.curve_samples < 0:
            raise SpecError(f"curve_samples={self.curve_samples} must be 0 (off) or more")
        _positive("shards", self.shards)
        if self.max_records is not None:
            _positive("max_records", self.max_records)
        if not 0.0 <= self.eval_fraction < 0.5:
            raise SpecError(f"eval_fraction={self.eval_fraction} must lie in [0, 0.5)")
        if not self.students and self.teacher is None:
            raise SpecError(
                "students is empty: add at least one {name, model} entry (a job without "
                "students builds a teacher cache, so it needs a teacher)"
            )
        names = [s.name for s in self.students]
        if len(set(names)) != len(names):
            raise SpecError(f"student names must be unique, got {names}")
        if self.mode == "data_parallel" and self.teacher is not None:
            raise SpecError(
                "mode data_parallel trains without a teacher: remove 'teacher', "
                "or use mode teacher_student / hybrid"
            )
        if self.mode != "data_parallel" and self.teacher is None:
            raise SpecError(f"mode {self.mode} needs a 'teacher: {{model: ...}}' entry")
        if self.mode == "hybrid" and self.students and all(s.replicas == 1 for s in self.students):
            raise SpecError(
                "mode hybrid means teacher + several replicas: set replicas > 1 on a student, "
                "or use mode teacher_student"
            )
        for s in self.students:
            if s.on_policy is not None:
                _check_on_policy(self, s)
            t = self.loss_for(s).temperature
            if self.teacher and t is not None and t != self.teacher.temperature:
                raise SpecError(
                    f"loss temperature {t} differs from teacher.temperature "
                    f"{self.teacher.temperature}: the cache stores log-probs at the teacher's τ, "
                    "so set both to the same value"
                )

    @property
    def has_teacher(self) -> bool:
        return self.teacher is not None

    @property
    def sample_max_length(self) -> int:
        return self.teacher.max_length if self.teacher else self.max_length

    @property
    def max_length_key(self) -> str:
        """The spec key that sets :attr:`sample_max_length`, for messages."""
        return "teacher.max_length" if self.teacher else "max_length"

    def loss_for(self, student: StudentSpec) -> LossSpec:
        """The track's loss (on the cache's batches)."""
        if self.mode == "data_parallel":
            return LossSpec(alpha=1.0)
        return student.loss or self.loss

    def on_policy_loss(self, student: StudentSpec) -> LossSpec:
        """The loss of an on-policy track's batches of its own samples: the divergence alone
        (α = 0: CE on its own tokens would teach it what it already says), reverse KL (what
        on-policy distillation minimises) unless the track sets a ``loss.kind`` of its own."""
        base = self.loss_for(student)
        kind = student.loss.kind if student.loss is not None else "reverse_kl"
        return replace(base, kind=kind, alpha=0.0)

    def student(self, name: str) -> StudentSpec:
        for s in self.students:
            if s.name == name:
                return s
        raise SpecError(
            f"no student track named {name!r}; tracks: {[s.name for s in self.students]}"
        )

    def to_dict(self) -> dict[str, Any]:
        """The spec as YAML-ready data (``job.yaml``): what :func:`spec_from_dict` reads."""
        d: dict[str, Any] = typed.dump(self)
        return d


def _check_on_policy(spec: JobSpec, s: StudentSpec) -> None:
    t = spec.teacher
    if t is None:
        raise SpecError(
            f"students[{s.name}].on_policy needs a teacher to score the student's samples: "
            "use mode teacher_student or hybrid with a teacher"
        )
    if t.target_method != "topk":
        raise SpecError(
            f"students[{s.name}].on_policy: the teacher scores the student's samples with its "
            f"top-k; set teacher.target_method: topk (not {t.target_method})"
        )
    assert s.on_policy is not None
    kind = spec.on_policy_loss(s).kind
    if s.on_policy.estimator == "token" and kind != "reverse_kl":
        raise SpecError(
            f"students[{s.name}].on_policy.estimator: token estimates reverse KL, and this "
            f"track's loss.kind is {kind}: set loss.kind: reverse_kl, or estimator: listed"
        )


def _safe(kind: str, value: str) -> None:
    try:
        check_name(kind, value)
    except DistillqError as e:
        raise SpecError(str(e)) from None


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise SpecError(f"{name}={value} must be positive; set it above 0")
