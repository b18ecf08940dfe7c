"""The connection to Redis: one pool per URL per process, and diagnostics when it fails.

Every Redis call of distillq goes through ``client`` (tasks, status) or ``quick_client``
(heartbeats); ``ping`` is how a command line finds out, at once, that Redis is not there.

A ``sentinel://h1:26379;sentinel://h2:26379`` URL (kombu's form) names Redis Sentinels instead
of a server; with the master name (DISTILLQ_SENTINEL_MASTER) every client asks them for the
current primary and asks again after a connection error, so it follows a failover.
"""

from __future__ import annotations

import functools
import os
import ssl
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedConnection

from distillq.errors import BrokerError


def is_sentinel(url: str) -> bool:
    return url.startswith("sentinel://")


def sentinel_hosts(url: str) -> list[tuple[str, int]]:
    """The (host, port) of every sentinel in a ``sentinel://a:26379;sentinel://b:26379`` URL."""
    parts = [urlsplit(u.strip()) for u in url.split(";") if u.strip()]
    return [(p.hostname or "localhost", p.port or 26379) for p in parts]


class _FollowingConnection(SentinelManagedConnection):
    """A connection to the primary that asks the sentinels where it is at every reconnect.

    redis-py (8.2) asks only when the pool hands a connection out: a command retried after a
    connection error reconnects to the address it had (``send_packed_command`` →
    ``connect_check_health``; redis/redis-py#3874, #3560). A command sent while the primary is
    dead thus retries against the dead address and, once that server is back as a replica,
    fails every retry with "The previous master is now a slave" (seen in `make soak-ha`)."""

    def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        if getattr(self, "_sock", None) is None and self.connection_pool.is_master:
            self.host, self.port = self.connection_pool.get_master_address()
        super().connect_check_health(check_health, retry_socket_connect)  # type: ignore[misc]


def _from_url(url: str, master: str, **options: Any) -> redis.Redis:
    """A client of ``url``; for sentinels, of the primary they name (found again on errors)."""
    if not is_sentinel(url):
        return redis.Redis.from_url(url, **options)
    if not master:
        raise BrokerError(
            "a sentinel:// broker needs the name of its primary: set DISTILLQ_SENTINEL_MASTER"
        )
    first = urlsplit(url.split(";")[0])
    db = int(first.path.strip("/") or 0)
    password = unquote(first.password) if first.password else None
    username = unquote(first.username) if first.username else None
    quick = {"socket_timeout": 2, "socket_connect_timeout": 2}
    # The sentinels are asked with short timeouts: a dead one must not stall finding the primary.
    sentinels = Sentinel(sentinel_hosts(url), sentinel_kwargs=quick, **quick)
    return sentinels.master_for(
        master,
        db=db,
        password=password,
        username=username,
        redis_class=redis.Redis,
        connection_class=_FollowingConnection,
        **options,
    )


@functools.lru_cache(maxsize=8)
def client(url: str, master: str = "") -> redis.Redis:
    """One connection pool per URL per process (created lazily, after fork).

    ``url`` carries everything: ``rediss://user:password@host:port/db?ssl_ca_certs=...``
    (Settings puts DISTILLQ_REDIS_TLS_* into the query, which redis-py reads); ``master``
    is the Sentinel master name of a ``sentinel://`` URL.
    """
    # Workers ride out a Redis restart or a failover (about a minute of backoff) instead of
    # failing tasks; through sentinels every retry asks for the primary anew.
    ride_out = Retry(ExponentialBackoff(cap=4, base=0.5), retries=20)
    return _from_url(
        url,
        master,
        socket_timeout=15,
        socket_connect_timeout=5,
        health_check_interval=30,
        retry=ride_out,
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


@functools.lru_cache(maxsize=8)
def quick_client(url: str, master: str = "") -> redis.Redis:
    """No retries: for heartbeats, which must not stall (a late beat makes a node look dead)."""
    return _from_url(
        url, master, socket_timeout=5, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0)
    )


def redacted(url: str) -> str:
    """The URL without its password, for messages and logs."""
    if ";" in url:  # sentinels: each URL of the list may carry the password
        return ";".join(redacted(u) for u in url.split(";"))
    parts = urlsplit(url)
    if parts.password:
        host = parts.hostname or ""
        user = f"{parts.username}:***@" if parts.username else ":***@"
        netloc = f"{user}{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def ping(url: str, master: str = "") -> None:
    """Raise BrokerError naming the (redacted) URL and the likely fix if Redis does not answer."""
    if not url:
        raise BrokerError(
            "no broker configured: set DISTILLQ_BROKER_URL=redis://host:6379/0 or pass --broker"
        )
    # One try, no backoff: a command line must say at once that Redis is not there.
    once = _from_url(url, master, socket_connect_timeout=5, retry=Retry(NoBackoff(), 0))
    try:
        once.ping()
    except (redis.RedisError, OSError) as e:  # down, refused, or not speaking Redis at all
        if is_sentinel(url):
            raise BrokerError(failover_state(url, master, e)) from None
        raise BrokerError(f"cannot reach Redis at {redacted(url)}: {_why(url, e)}") from None
    finally:
        once.close()


def client_or_why(url: str, master: str = "") -> tuple[redis.Redis | None, str]:
    """``client(url, master)`` if Redis answers now, else None and ``ping``'s reason."""
    try:
        ping(url, master)
    except BrokerError as e:
        return None, str(e)
    return client(url, master), ""


def failover_state(url: str, master: str, e: BaseException) -> str:
    """Why the primary behind ``url``'s sentinels does not answer, as the sentinels see it."""
    seen: list[dict[str, Any]] = []
    unknown = 0
    for host, port in sentinel_hosts(url):
        one = redis.Redis(host, port, socket_timeout=2, socket_connect_timeout=2)
        try:
            seen.append(one.sentinel_master(master))
        except redis.ResponseError:  # "No such master with that name"
            unknown += 1
        except (redis.RedisError, OSError):
            continue
        finally:
            one.close()
    where = f"sentinels {redacted(url)}"
    if unknown and not seen:
        return f"the {where} monitor no primary named {master!r}; fix DISTILLQ_SENTINEL_MASTER"
    if not seen:
        return f"cannot reach Redis: no sentinel of {where} answers; start them or fix DISTILLQ_BROKER_URL"
    down = [s for s in seen if s.get("is_sdown") or s.get("is_odown")]
    moving = [s for s in seen if "failover" in str(s.get("flags", ""))]
    primary = f"{seen[0].get('ip')}:{seen[0].get('port')}"
    if down or moving:
        return (
            f"the broker is failing over: {len(down) or len(moving)} of {len(seen)} sentinel(s) "
            f"see primary {master!r} ({primary}) down; workers wait and resume on the primary "
            "they elect (usually within seconds)"
        )
    return (
        f"the broker's primary {master!r} at {primary} does not answer ({type(e).__name__}) "
        f"and its {len(seen)} sentinel(s) do not yet call it down; if it stays down they "
        "promote a replica, else check that server or DISTILLQ_SENTINEL_MASTER"
    )


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
