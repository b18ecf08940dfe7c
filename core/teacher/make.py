"""The job's teacher, made once per worker process where it can be: a transformers model, a
GGUF run by llama.cpp, or a pool of servers, behind the ``Teacher`` protocol
(``core/teacher/local.py``). The teacher stage and on-policy scoring both ask here."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

from distillq.core.job.gguf_models import read_info
from distillq.core.job.jobs import Job
from distillq.core.job.models import load_causal_lm, load_tokenizer, sample_tokenizer, teacher_dtype
from distillq.core.job.spec import LocalTeacherSpec, ServedTeacherSpec
from distillq.core.targets import registry as targets
from distillq.core.teacher import served
from distillq.core.teacher.gguf import GgufTeacher
from distillq.core.teacher.local import LocalTeacher, Teacher
from distillq.core.teacher.served import EndpointTeacher


@functools.lru_cache(maxsize=1)
def _load_teacher(ref: str, dtype: str) -> tuple[Any, Any]:
    import torch

    model = load_causal_lm(ref, "teacher model", getattr(torch, dtype))
    return model, load_tokenizer(ref, "teacher model")


def local_model(t: LocalTeacherSpec) -> tuple[Any, Any]:
    """The teacher model and tokenizer, loaded once per worker process, at ``teacher.dtype``."""
    return _load_teacher(t.model, teacher_dtype(t.dtype))


_gguf: dict[tuple[Any, ...], GgufTeacher] = {}


def _gguf_teacher(job: Job, t: LocalTeacherSpec, tok: Any) -> GgufTeacher:
    """One llama.cpp teacher per worker process (its context and KV cache are reused)."""
    import torch

    key = (
        t.model,
        t.batch_size,
        job.spec.sample_max_length,
        t.temperature,
        str(targets.build(t)),
        t.generate,
    )
    if key not in _gguf:
        _gguf.clear()
        _gguf[key] = GgufTeacher(
            read_info(t.model),
            tok,
            temperature=t.temperature,
            batch_size=t.batch_size,
            max_length=job.spec.sample_max_length,
            generate=t.generate,
            method=targets.build(t),
            threads=torch.get_num_threads(),
        )
    return _gguf[key]


def make_teacher(
    job: Job,
    stack: contextlib.ExitStack,
    on_error: Callable[[str], None] | None = None,
    on_wait: Callable[[], None] | None = None,
    token_column: bool = False,
) -> tuple[Teacher | None, Any]:
    """The job's teacher (local model, or a pool on its endpoints) and the tokenizer samples
    are tokenized with. None without a teacher (data_parallel). ``token_column``: a teacher
    that can (a local or GGUF one) lists each position's own token too (on-policy scoring;
    ``has_token_column``)."""
    t = job.spec.teacher
    if t is None:
        return None, load_tokenizer(job.spec.students[0].model)
    if isinstance(t, ServedTeacherSpec):
        tok = sample_tokenizer(job.spec)
        http = stack.enter_context(served.pool(t, on_error))
        dialect = job.info.teacher_dialect or t.dialect
        served_teacher = EndpointTeacher(
            t, tok, http, dialect, max_length=job.spec.sample_max_length, on_wait=on_wait
        )
        return served_teacher, tok
    if t.is_gguf:
        tok = sample_tokenizer(job.spec)
        gguf = _gguf_teacher(job, t, tok)
        gguf.token_column = token_column
        return gguf, tok
    model, tok = local_model(t)
    local = LocalTeacher(
        model,
        tok,
        temperature=t.temperature,
        batch_size=t.batch_size,
        max_length=job.spec.sample_max_length,
        generate=t.generate,
        group_by_length=t.group_by_length,
        method=targets.build(t),
        token_column=token_column,
    )
    return local, tok


def has_token_column(job: Job) -> bool:
    """Whether ``make_teacher(token_column=True)`` lists every position's own token: a server
    answers with its top-k only (vLLM and llama-cpp-python list the prompt's own token there)."""
    return job.spec.teacher is not None and not isinstance(job.spec.teacher, ServedTeacherSpec)
