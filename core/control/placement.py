"""Which node may run a task: one that can load the task's models.

A node that cannot (the path is not mounted there, a hub id is not in its cache) hands the
task back to its queue for another node instead of failing it: it costs no attempt, waits a
short back-off first (so an idle incapable node cannot spin), and is bounded. The task fails
only when every live node on its queue has said it cannot load the model, with a sentence
that says so, or after ``MAX_HANDBACKS``.

Hand-back was chosen over routing to per-node queues: it needs no knowledge of capability at
publish time (the teacher finishing a shard queues student work before any student node has
looked at the student model), and a node that gains the model (a mount appears) starts
taking work within ``RECHECK_SECONDS`` without anything re-routed.
"""

from __future__ import annotations

import time

from distillq.core.job.jobs import Job
from distillq.core.job.models import check_loadable
from distillq.errors import ModelError

MAX_HANDBACKS = 500
"""Per task, over all nodes: at a back-off of up to 5 s, at least 40 minutes of waiting."""
RECHECK_SECONDS = 60.0
"""How long a node trusts its own answer about a model before looking again."""

STORAGE = "<storage>"
"""The reference a node marks unable when it does not see the job's storage at all."""

Need = tuple[str, str]  # (what, model reference), e.g. ("teacher", "/models/llama-8b")

_seen: dict[str, tuple[float, str | None]] = {}


def teacher_needs(job: Job) -> list[Need]:
    t = job.spec.teacher
    # A served teacher needs no model on the node: any teacher node can ask the server.
    return [("teacher", t.model)] if t and not t.is_endpoint else []


def student_needs(job: Job, track: str | None = None) -> list[Need]:
    """The track's model, or every track's (finalize)."""
    specs = [job.spec.student(track)] if track else list(job.spec.students)
    return [(f"student {s.name!r}", s.model) for s in specs]


def finalize_needs(job: Job) -> list[Need]:
    """Every track's model, and the teacher where an on-policy track's held-out text is scored
    at the end (``core/onpolicy.py::heldout``)."""
    scored = any(s.on_policy is not None for s in job.spec.students)
    return student_needs(job) + (teacher_needs(job) if scored else [])


def cannot_load(what: str, ref: str) -> str | None:
    """Why this node cannot load ``ref``, or None; checked lazily, remembered a while."""
    now = time.time()
    hit = _seen.get(ref)
    if hit is not None and now - hit[0] < RECHECK_SECONDS:
        return hit[1]
    try:
        check_loadable(ref, what)
        reason = None
    except ModelError as e:
        reason = str(e)
    _seen[ref] = (now, reason)
    return reason


def backoff(handbacks: int) -> float:
    """Seconds a node holds a task it cannot run before handing it back (0.25 s doubling, ≤ 5 s)."""
    return min(5.0, 0.25 * 2 ** min(handbacks, 5))
