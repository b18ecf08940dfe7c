"""The connection to Redis: one pool per URL per process, and diagnostics when it fails.

Every Redis call of distillq goes through ``client`` (tasks, status) or ``quick_client``
(heartbeats); ``ping`` is how a command line finds out, at once, that Redis is not there.
"""

from __future__ import annotations

import functools
import os
import ssl
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from distillq.errors import BrokerError


@functools.lru_cache(maxsize=8)
def client(url: str) -> redis.Redis:
    """One connection pool per URL per process (created lazily, after fork).

    ``url`` carries everything: ``rediss://user:password@host:port/db?ssl_ca_certs=...``
    (Settings puts DISTILLQ_REDIS_TLS_* into the query, which redis-py reads).
    """
    # Workers ride out a Redis restart (about a minute of backoff) instead of failing tasks.
    ride_out = Retry(ExponentialBackoff(cap=4, base=0.5), retries=20)
    return redis.Redis.from_url(
        url,
        socket_timeout=15,
        socket_connect_timeout=5,
        health_check_interval=30,
        retry=ride_out,
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


@functools.lru_cache(maxsize=8)
def quick_client(url: str) -> redis.Redis:
    """No retries: for heartbeats, which must not stall (a late beat makes a node look dead)."""
    return redis.Redis.from_url(
        url, socket_timeout=5, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0)
    )


def redacted(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password:
        host = parts.hostname or ""
        user = f"{parts.username}:***@" if parts.username else ":***@"
        netloc = f"{user}{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def ping(url: str) -> None:
    """Raise BrokerError naming the (redacted) URL and the likely fix if Redis does not answer."""
    if not url:
        raise BrokerError(
            "no broker configured: set DISTILLQ_BROKER_URL=redis://host:6379/0 or pass --broker"
        )
    # One try, no backoff: a command line must say at once that Redis is not there.
    once = redis.Redis.from_url(url, socket_connect_timeout=5, retry=Retry(NoBackoff(), 0))
    try:
        once.ping()
    except (redis.RedisError, OSError) as e:  # down, refused, or not speaking Redis at all
        raise BrokerError(f"cannot reach Redis at {redacted(url)}: {_why(url, e)}") from None
    finally:
        once.close()


def _stranger(url: str) -> str:
    """What a server that is not Redis says to an inline PING ("" if it is Redis or silent)."""
    import socket

    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "localhost", parts.port or 6379), 3) as c:
            c.settimeout(3)
            c.sendall(b"PING\r\n")
            answer = c.recv(64)
    except OSError:
        return ""
    # Redis answers +PONG, or -NOAUTH/-ERR when it wants a password first.
    return "" if not answer or answer[:1] in (b"+", b"-") else answer.decode("latin-1")[:40]


def _why(url: str, e: BaseException) -> str:
    """What went wrong and what to change, from the error (or the OS/TLS error under it)."""
    cause = e.__cause__ or e.__context__
    if isinstance(e, redis.AuthenticationError):
        return "user or password refused; fix them in DISTILLQ_BROKER_URL"
    if isinstance(cause, ssl.SSLCertVerificationError):
        return (
            f"TLS certificate not trusted: {cause.verify_message}; "
            "set DISTILLQ_REDIS_TLS_CA to the CA that signed the server's certificate"
        )
    if isinstance(cause, ssl.SSLError):
        return f"TLS handshake failed: {cause.reason}; check DISTILLQ_REDIS_TLS_*"
    if isinstance(cause, FileNotFoundError):
        query = parse_qsl(urlsplit(url).query)
        files = [v for k, v in query if k in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")]
        missing = [f for f in files if not os.path.exists(f)]
        return f"TLS file not found: {', '.join(missing) or cause}; fix DISTILLQ_REDIS_TLS_*"
    if isinstance(cause, ConnectionResetError) and url.startswith("redis://"):
        return "connection reset: a TLS-only port? use rediss:// and DISTILLQ_REDIS_TLS_CA"
    if url.startswith("redis://") and (answer := _stranger(url)):
        return (
            f"the server there is not Redis (it answered {answer!r}); another service has that "
            "port: fix the port in DISTILLQ_BROKER_URL"
        )
    return f"{type(e).__name__}; start it or fix DISTILLQ_BROKER_URL"
