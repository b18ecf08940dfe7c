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


def all_locks_pattern() -> str:
    """Every job's track locks."""
    return f"{PREFIX}:job:*:lock:*"


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


def job_pattern(job_id: str) -> str:
    """Every key of ours that belongs to one job."""
    return f"{PREFIX}:job:{job_id}:*"


def task_id(job_id: str) -> str:
    """A new Celery task id of ``job_id``'s: the job's id first, so its results can be found."""
    import uuid

    return f"{job_id}.{uuid.uuid4().hex}"


def results_pattern(job_id: str) -> str:
    """Celery's result keys of the job's tasks (the Redis backend's ``celery-task-meta-<id>``)."""
    return f"celery-task-meta-{job_id}.*"


# kombu's Redis transport: a queue is a list named after it; delivered, unacknowledged
# messages wait in one hash (``Channel.unacked_key``), each as [message, exchange, routing key].
KOMBU_UNACKED = "unacked"


def all_progress_pattern() -> str:
    """Progress entries of every job's running tasks."""
    return f"{PREFIX}:job:*:progress:*"


def parse_progress(key: str) -> tuple[str, str] | None:
    """(job id, task key) of a progress entry's key, or None."""
    head, _, task = key.partition(":progress:")
    job_id = head.removeprefix(f"{PREFIX}:job:")
    return (job_id, task) if task and job_id != head else None


def reconcile_claim(run_id: str) -> str:
    """Held by the one node that reconciles the jobs after the broker's primary became
    ``run_id`` (a failover, or a restart)."""
    return f"{PREFIX}:reconcile:{run_id}"
