"""Hand a dead node's unacknowledged tasks back to their queues, long before Redis would.

With late acks, kombu's Redis transport keeps every delivered message in its ``unacked`` hash
until the worker acknowledges it, and re-queues it only after the visibility timeout, which
must outlast the longest task (hours). A node killed mid-shard would hold its shard that long.
So each node records the delivery tags it takes (``task_received``, before the task runs), and
every live node's heartbeat sweeps: the tags of a node that stopped beating and are still
unacknowledged go back to the head of their queue. A tag that was acked is simply skipped.

If the "dead" node was only partitioned and finishes after all, the task has run twice; every
task is idempotent (docs/DESIGN.md §8), so its effect still lands once.
"""

from __future__ import annotations

import logging
from typing import Any

from distillq.core.runtime.registry import list_nodes
from distillq.storage import keys
from distillq.workers import filing

log = logging.getLogger(__name__)

CLAIM_SECONDS = 60


def record_delivery(r: Any, hostname: str, tag: str) -> None:
    r.sadd(keys.deliveries(hostname), tag)


def held_tags() -> set[str] | None:
    """Delivery tags of the tasks this worker process holds now (reserved, waiting, running)."""
    from celery.worker import state  # only inside a running worker

    try:
        requests = list(state.requests.values())
    except RuntimeError:  # changed size under us (the consumer runs in another thread)
        return None
    return {str(r.message.delivery_tag) for r in requests if getattr(r, "message", None)}


class Reaper:
    """Sweeps on behalf of one node (``hostname``); uses the Celery app's broker connection."""

    def __init__(self, celery_app: Any, r: Any, hostname: str) -> None:
        self.app, self.r, self.hostname = celery_app, r, hostname
        self._conn: Any = None
        self._suspects: set[str] = set()
        self._unrecorded: set[str] = set()
        self._primary: str | None = None  # the run id of the broker's primary, as last seen
        self._changed = 0  # sweeps since the primary changed; 0: no change to act on

    def record(self, tag: str) -> None:
        """Note that this node holds ``tag``. With Redis away (a message taken just before it
        went), keep the tag here and record it on the next sweep: a delivery must never be
        known to no recovery path."""
        self._unrecorded.add(tag)
        self.flush()

    def flush(self) -> None:
        """Record what was taken while Redis was away; re-queue what kombu popped but could
        not file (workers/filing.py). Raises while Redis is still away."""
        if filing.pending():
            filing.refile(self._channel())
        while self._unrecorded:
            tag = next(iter(self._unrecorded))
            record_delivery(self.r, self.hostname, tag)  # raises while Redis is away
            self._unrecorded.discard(tag)

    def _channel(self) -> Any:
        # kombu's own channel: it knows the unacked key names, prefixes and queue bindings.
        if self._conn is None:
            self._conn = self.app.connection_for_write()
        return self._conn.default_channel

    def close(self) -> None:
        if self._conn is not None:
            self._conn.release()
            self._conn = None

    def unacked(self, tags: set[bytes]) -> list[str]:
        ch = self._channel()
        names = [t.decode() for t in tags]
        pipe = ch.client.pipeline()
        for tag in names:
            pipe.hexists(ch.unacked_key, tag)
        return [t for t, held in zip(names, pipe.execute(), strict=True) if held]

    def hand_back(self, hostname: str) -> int:
        """Re-queue ``hostname``'s unacknowledged deliveries; returns how many went back."""
        key = keys.deliveries(hostname)
        pending = self.unacked(self.r.smembers(key))
        qos = self._channel().qos
        for tag in pending:
            # rightmost: the consumer pops from the right, so lost work runs next, not last.
            qos.restore_by_tag(tag, leftmost=False)
        self.r.delete(key)
        return len(pending)

    def check_own(self) -> int:
        """Tidy this node's own set: drop acknowledged tags, and hand back tags that are still
        unacknowledged though no task of this process holds them (a task cancelled when the
        broker connection dropped is one). Such a tag must be seen orphaned on two sweeps in a
        row, so a message taken between the signal and the bookkeeping is never handed back."""
        key = keys.deliveries(self.hostname)
        tags = self.r.smembers(key)
        pending = set(self.unacked(tags))
        acked = {t.decode() for t in tags} - pending
        if acked:
            self.r.srem(key, *acked)
        held = held_tags()
        if held is None:
            return 0
        orphans = pending - held
        due, self._suspects = orphans & self._suspects, orphans - self._suspects
        qos = self._channel().qos
        for tag in due:
            qos.restore_by_tag(tag, leftmost=False)
            self.r.srem(key, tag)
        if due:
            log.warning(
                "%s: %d orphaned task(s) handed back to the queues", self.hostname, len(due)
            )
        return len(due)

    def recover_own(self) -> int:
        """At start-up, before consuming: what a previous process of this name left unacked."""
        n = self.hand_back(self.hostname)
        if n:
            log.warning("%s: %d task(s) left by a previous run handed back", self.hostname, n)
        return n

    def watch_primary(self) -> dict[str, list[str]]:
        """After the broker's primary changed (a Sentinel failover, a restart), one node
        queues again what the old primary took with it (``tasks.reconcile``). It waits one
        more sweep, so every node has reconnected and handed back what it holds first."""
        run_id = str(self.r.info("server")["run_id"])
        if self._primary is None or (run_id == self._primary and not self._changed):
            self._primary = run_id
            return {}
        if run_id != self._primary:
            self._primary, self._changed = run_id, 1
            return {}
        self._changed = 0
        if not self.r.set(keys.reconcile_claim(run_id), self.hostname, nx=True, ex=3600):
            return {}
        from distillq.tasks.celery_app import settings_of
        from distillq.tasks.reconcile import reconcile_all

        queued = reconcile_all(self.app, self.r, settings_of(self.app).storage)
        log.warning(
            "%s: the broker's primary changed (run id %s): jobs checked against storage, %s",
            self.hostname,
            run_id[:12],
            f"work queued again in {len(queued)} job(s)" if queued else "nothing was lost",
        )
        return queued

    def sweep(self) -> int:
        """One pass: hand back the deliveries of every node that is gone or forgotten, and
        after the broker changed, reconcile the jobs with storage."""
        self.flush()
        self.check_own()
        self.watch_primary()
        alive = {n.info.hostname for n in list_nodes(self.r) if n.state == "up"}
        prefix = keys.deliveries("")
        total = 0
        for raw in self.r.scan_iter(match=keys.deliveries_pattern(), count=500):
            host = raw.decode()[len(prefix) :]
            if host in alive or host == self.hostname:
                continue
            if not self.r.set(keys.reap_claim(host), self.hostname, nx=True, ex=CLAIM_SECONDS):
                continue
            n = self.hand_back(host)
            total += n
            if n:
                log.warning(
                    "node %s stopped beating: %d unacknowledged task(s) handed back to the queues",
                    host,
                    n,
                )
        return total
