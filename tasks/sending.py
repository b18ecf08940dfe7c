"""Sending the next tasks from inside a task, across a broker that went away and came back.

Celery's publish retry policy rides out a broker that is down, but not a producer that
survived the outage in the pool with its channel closed: kombu then fails inside its own
recovery (``channel.connection`` is None: AttributeError on ``.client`` or ``.cycle``, seen
after a Redis restart in tests/e2e/test_faults.py). Such a producer is never usable again, so
the pools are dropped and the send tried afresh.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import redis
from celery import Celery
from kombu import pools
from kombu.exceptions import OperationalError

log = logging.getLogger(__name__)

T = TypeVar("T")

# What a dead pooled channel or a broker still coming back raises from a publish.
BROKEN = (AttributeError, OperationalError, redis.ConnectionError, redis.TimeoutError, OSError)


def fresh_pools(app: Celery) -> None:
    """Drop this process's pooled broker connections and producers for ``app``'s broker (as
    Celery does after a fork); the next publish opens new ones."""
    conn = app.connection_for_write()
    try:
        # kombu keeps one pool per broker in process-wide registries; Celery's app.pool and
        # producer pool are entries there, so they must leave the registries, not only close.
        dead = [group.pop(conn, None) for group in (pools.producers, pools.connections)]
    finally:
        conn.release()
    app._pool = None
    app.amqp._producer_pool = None
    # The result backend is cached per thread too, subscribed to the old Redis: sending a
    # task makes it listen for the result, and it gives up ("must be restarted") there.
    app._local.__dict__.pop("backend", None)
    for pool in dead:
        if pool is not None:
            try:
                pool.force_close_all()
            except Exception as e:  # closing dead connections may fail the same way
                log.debug("closing the old broker pool: %s", e)


def send(app: Celery, publish: Callable[[], T], what: str, tries: int = 6) -> T:
    """``publish()``, once more on fresh pools after each broken-connection error (backing
    off 1, 2, 4... s); other errors, and Celery's Retry, go through untouched."""
    for n in range(tries):
        try:
            return publish()
        except BROKEN as e:
            if n == tries - 1:
                raise
            log.warning("sending %s: broker connection broken (%r); reconnecting", what, e)
            fresh_pools(app)
            time.sleep(min(8, 2**n))
    raise AssertionError("unreachable")
