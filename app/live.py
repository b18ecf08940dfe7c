"""Live state in Redis: task progress and attempt counters. Keys come from storage/keys.py."""

from __future__ import annotations

import functools
import json
from typing import Any

import redis

from app.errors import BrokerError
from storage import keys

PROGRESS_TTL = 24 * 3600


@functools.lru_cache(maxsize=8)
def client(url: str) -> redis.Redis:
    """One connection pool per URL per process (created lazily, after fork)."""
    return redis.Redis.from_url(
        url, socket_timeout=15, socket_connect_timeout=5, health_check_interval=30
    )


def redacted(url: str) -> str:
    """The URL without its password, for messages and logs."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        host = parts.hostname or ""
        user = f"{parts.username}:***@" if parts.username else ":***@"
        netloc = f"{user}{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def ping(url: str) -> None:
    """Raise BrokerError naming the (redacted) URL if Redis does not answer."""
    if not url:
        raise BrokerError(
            "no broker configured: set DISTILLQ_BROKER_URL=redis://host:6379/0 or pass --broker"
        )
    try:
        client(url).ping()
    except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
        raise BrokerError(
            f"cannot reach Redis at {redacted(url)} ({type(e).__name__}); start it or fix DISTILLQ_BROKER_URL"
        ) from None


def set_progress(r: redis.Redis, job_id: str, task: str, fields: dict[str, Any]) -> None:
    key = keys.progress(job_id, task)
    r.set(key, json.dumps(fields), ex=PROGRESS_TTL)


def clear_progress(r: redis.Redis, job_id: str, task: str) -> None:
    r.delete(keys.progress(job_id, task))


def progress(r: redis.Redis, job_id: str) -> dict[str, dict[str, Any]]:
    out = {}
    prefix = keys.progress(job_id, "")
    for key in r.scan_iter(match=keys.progress_pattern(job_id), count=500):
        raw = r.get(key)
        if raw:
            out[key.decode()[len(prefix) :]] = json.loads(raw)
    return out


LOCK_SECONDS = 600  # a holder of a track lock longer than this is presumed dead


def track_lock(r: redis.Redis, job_id: str, track: str) -> Any:
    """The per-track lock: merges and round scheduling of one track never interleave."""
    return r.lock(
        keys.track_lock(job_id, track), timeout=LOCK_SECONDS, blocking_timeout=LOCK_SECONDS
    )


def reset_attempts(r: redis.Redis, job_id: str) -> None:
    for key in r.scan_iter(match=keys.attempts_pattern(job_id), count=500):
        r.delete(key)


def next_attempt(r: redis.Redis, job_id: str, task: str, ttl: int) -> int:
    """Count one more delivery of ``task``; returns the attempt number (1 for the first)."""
    key = keys.attempts(job_id, task)
    n = int(r.incr(key))
    r.expire(key, ttl)
    return n
