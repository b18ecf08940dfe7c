"""Close the one window in which a delivered message was known to no recovery path.

kombu's Redis transport takes a message in two commands: BRPOP pops it off its queue, then a
pipeline files it in the ``unacked`` hash, where the reaper and the visibility timeout can
find it. If Redis goes away between the two, the pop stands (an AOF keeps it) and the filing
fails: the message was in no queue, in no hash and never handed to Celery, so it was lost for
good (issue 14a). ``FilingQoS`` keeps such a message in this process and the node's next
sweep, with Redis back, puts it at the head of its queue again (``refile``). A message the
pipeline did file before the connection broke is taken out of ``unacked`` in the same
transaction, so it runs once.

The guard lives in the worker's main process, which is where kombu files messages. It also
holds the ``deliver`` and ``ack`` failpoints, the two steps of a delivery that only kombu sees.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis
from kombu.transport import redis as kombu_redis

from distillq.core import faults

log = logging.getLogger(__name__)

_lock = threading.Lock()
# (payload, exchange, routing key, delivery tag) of messages popped but filed nowhere.
_unfiled: list[tuple[dict[str, Any], str, str, str]] = []

BROKEN = (redis.ConnectionError, redis.TimeoutError, OSError)


def task_of(message: Any) -> str:
    headers = getattr(message, "headers", None) or {}
    return str(headers.get("task", "?"))


class FilingQoS(kombu_redis.QoS):
    def append(self, message: Any, delivery_tag: Any) -> None:
        faults.hit(f"deliver:{task_of(message)}")
        try:
            super().append(message, delivery_tag)
        except BROKEN as e:
            info = message.delivery_info
            with _lock:
                _unfiled.append(
                    (message._raw, info["exchange"], info["routing_key"], str(delivery_tag))
                )
            log.warning(
                "message %s (%s) taken just as Redis went away (%s); it goes back to its queue "
                "when Redis is back",
                delivery_tag,
                task_of(message),
                e,
            )
            raise

    def ack(self, delivery_tag: Any) -> None:
        faults.hit(f"ack:{task_of(self._delivered.get(delivery_tag))}")
        super().ack(delivery_tag)


def install() -> None:
    """Make every Redis channel of this process file its deliveries through ``FilingQoS``."""
    kombu_redis.Channel.QoS = FilingQoS


def pending() -> int:
    with _lock:
        return len(_unfiled)


def _put_back(channel: Any, entry: tuple[dict[str, Any], str, str, str]) -> None:
    payload, exchange, routing_key, tag = entry

    def transaction(pipe: Any) -> None:
        pipe.multi()
        pipe.hdel(channel.unacked_key, tag)
        pipe.zrem(channel.unacked_index_key, tag)
        # rightmost: consumers pop from the right, so the lost message runs next.
        channel._do_restore_message(payload, exchange, routing_key, pipe, leftmost=False)

    with channel.conn_or_acquire() as client:
        client.transaction(transaction, channel.unacked_key)
    log.warning("message %s, taken as Redis went away, is back in its queue", tag)


def refile(channel: Any) -> int:
    """Put every unfiled message back at the head of its queue; raises while Redis is away
    (the rest stay kept for the next sweep). Returns how many went back."""
    done = 0
    while True:
        with _lock:
            if not _unfiled:
                return done
            entry = _unfiled[0]
        _put_back(channel, entry)
        with _lock:
            _unfiled.pop(0)
        done += 1
