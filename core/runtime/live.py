"""Live state of running jobs in Redis: task progress, per-track locks, attempt counters.

Keys come from ``storage/keys.py``; the connection from ``core/broker.py``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator

import redis
from redis.exceptions import LockError, LockNotOwnedError

from distillq.errors import Superseded
from distillq.storage import keys, records
from distillq.storage.records import Killed, Progress

log = logging.getLogger(__name__)

PROGRESS_TTL = 24 * 3600


def set_progress(r: redis.Redis, job_id: str, task: str, record: Progress) -> None:
    r.set(keys.progress(job_id, task), json.dumps(record), ex=PROGRESS_TTL)


def clear_progress(r: redis.Redis, job_id: str, task: str) -> None:
    r.delete(keys.progress(job_id, task))


def progress(r: redis.Redis, job_id: str) -> dict[str, Progress]:
    """Progress of the job's running tasks, by task key."""
    out = {}
    prefix = keys.progress(job_id, "")
    for key in r.scan_iter(match=keys.progress_pattern(job_id), count=500):
        raw = r.get(key)
        if raw:
            name = key.decode()[len(prefix) :]
            out[name] = json.loads(raw)
    return out


LOCK_SECONDS = 600  # a holder of a track lock longer than this is presumed dead


@contextlib.contextmanager
def track_lock(r: redis.Redis, job_id: str, track: str) -> Iterator[None]:
    """The per-track lock: merges and round scheduling of one track never interleave.

    A Redis failover can lose the lock (replication is asynchronous): the holder then finds
    it gone at release, and another task may have held it meanwhile. That costs no
    correctness: a merge publishes its version with an exclusive rename on storage
    (``storage.atomic.atomic_dir``), so of two merges that both read v7, one publishes v8 and
    the other fails and, retried, finds its round merged. So a lost lock is a warning here.
    """
    lock = r.lock(
        keys.track_lock(job_id, track), timeout=LOCK_SECONDS, blocking_timeout=LOCK_SECONDS
    )
    if not lock.acquire():
        raise LockError(f"job {job_id} track {track}: its lock was not free in {LOCK_SECONDS} s")
    try:
        yield
    finally:
        try:
            lock.release()
        except LockNotOwnedError:
            log.warning(
                "job %s track %s: the track lock was gone at release (a Redis failover or "
                "an expiry); storage's exclusive version publish kept the work single",
                job_id,
                track,
            )


def drop_locks(r: redis.Redis) -> int:
    """Delete every track lock; returns how many there were. After a failover a lock may stand
    for a release the old primary took with it (held by nobody, for LOCK_SECONDS), so none
    is trusted: a lock only saves duplicate work, the storage fence keeps merges single."""
    found = list(r.scan_iter(match=keys.all_locks_pattern(), count=1000))
    return int(r.delete(*found)) if found else 0


def reset_attempts(r: redis.Redis, job_id: str) -> None:
    for key in r.scan_iter(match=keys.attempts_pattern(job_id), count=500):
        r.delete(key)


def next_attempt(r: redis.Redis, job_id: str, task: str, ttl: int) -> int:
    """Count one more delivery of ``task``; returns the attempt number (1 for the first)."""
    key = keys.attempts(job_id, task)
    n = int(r.incr(key))
    r.expire(key, ttl)
    return n


def record_kill(r: redis.Redis, job_id: str, task: str, killed: Killed, ttl: int) -> None:
    r.set(keys.killed(job_id, task), json.dumps(records.to_json(killed)), ex=ttl)


def last_kill(r: redis.Redis, job_id: str, task: str) -> Killed | None:
    raw = r.get(keys.killed(job_id, task))
    return None if not raw else records.from_json(Killed, json.loads(raw), "killed record")


def attempts(r: redis.Redis, job_id: str) -> dict[str, int]:
    """Task key → deliveries counted so far, for every task of the job."""
    prefix = keys.attempts(job_id, "")
    return {
        k.decode()[len(prefix) :]: int(r.get(k) or 0)
        for k in r.scan_iter(match=keys.attempts_pattern(job_id))
    }


def check_fence(r: redis.Redis, job_id: str, task: str, attempt: int) -> None:
    """Raise Superseded if a later delivery of ``task`` started than ``attempt``: the work was
    handed to another node while this one was presumed dead. A counter that is gone (expired,
    flushed) fences nothing: both attempts then write the same deterministic result."""
    now = int(r.get(keys.attempts(job_id, task)) or 0)
    if now > attempt:
        raise Superseded(
            f"{task}: attempt {attempt} was superseded by attempt {now} (a later delivery of the "
            "same work: this node was presumed dead, or the work was queued twice); its result "
            "is discarded, the later one stands"
        )


def mark_unable(r: redis.Redis, job_id: str, node: str, ref: str, reason: str) -> None:
    r.hset(keys.unable(job_id), f"{node}\t{ref}", reason)
    r.expire(keys.unable(job_id), PROGRESS_TTL)


def unable_nodes(r: redis.Redis, job_id: str) -> dict[str, set[str]]:
    """Model reference → the nodes that said they cannot load it."""
    out: dict[str, set[str]] = {}
    for field in r.hkeys(keys.unable(job_id)):
        node, _, ref = field.decode().partition("\t")
        out.setdefault(ref, set()).add(node)
    return out


def count_handback(r: redis.Redis, job_id: str, task: str, ttl: int) -> int:
    key = keys.handbacks(job_id, task)
    n = int(r.incr(key))
    r.expire(key, ttl)
    return n


def release_job(r: redis.Redis, job_id: str, ttl: int) -> int:
    """Let a finished job's keys (attempt counts, hand-backs, task results) expire within
    ``ttl`` seconds instead of ``result_expires``; returns how many. Redis then holds nothing
    of the job an hour after it ends, however many jobs run (bench/scale.py)."""
    n = 0
    with r.pipeline(transaction=False) as pipe:
        for pattern in (keys.job_pattern(job_id), keys.results_pattern(job_id)):
            for key in r.scan_iter(match=pattern, count=1000):
                pipe.expire(key, ttl, lt=True)  # only shortens: NX-less keys get one too
                n += 1
        pipe.execute()
    return n
