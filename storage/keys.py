"""Every Redis key distillq uses, in one place. Redis holds live state only (docs/DESIGN.md §4)."""

from __future__ import annotations

PREFIX = "distillq"


def node(hostname: str) -> str:
    """Hash of one worker node's resources; expires unless its heartbeat refreshes it."""
    return f"{PREFIX}:node:{hostname}"


def node_pattern() -> str:
    return f"{PREFIX}:node:*"


def progress(job_id: str, task: str) -> str:
    """Live progress of one running task (hash: step, loss, tokens/s, ...)."""
    return f"{PREFIX}:job:{job_id}:progress:{task}"


def progress_pattern(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:progress:*"


def track_lock(job_id: str, track: str) -> str:
    """Lock held while a round's deltas are merged into a track's global checkpoint."""
    return f"{PREFIX}:job:{job_id}:lock:{track}"


def attempts(job_id: str, task: str) -> str:
    """Delivery counter of one logical task, to cap redelivery of a poison task."""
    return f"{PREFIX}:job:{job_id}:attempts:{task}"


def killed(job_id: str, task: str) -> str:
    """How the last delivery of a task died, when SIGKILL ended it (``records.Killed``)."""
    return f"{PREFIX}:job:{job_id}:killed:{task}"


def attempts_pattern(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:attempts:*"


def deliveries(hostname: str) -> str:
    """Set of the kombu delivery tags a worker node has taken and not yet acknowledged."""
    return f"{PREFIX}:deliveries:{hostname}"


def deliveries_pattern() -> str:
    return f"{PREFIX}:deliveries:*"


def reap_claim(hostname: str) -> str:
    """Short-lived claim: one live node hands a dead node's deliveries back, not all of them."""
    return f"{PREFIX}:reap:{hostname}"


def unable(job_id: str) -> str:
    """Hash of the nodes that cannot load one of the job's models: "<node>\\t<model>" → why."""
    return f"{PREFIX}:job:{job_id}:unable"


def handbacks(job_id: str, task: str) -> str:
    """How often a task was handed back by nodes that cannot load its model."""
    return f"{PREFIX}:job:{job_id}:handbacks:{task}"
