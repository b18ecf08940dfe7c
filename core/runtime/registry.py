"""The node registry in Redis as readers see it: which worker nodes are up, and on which queues.

Nodes write their own entry (``workers.node.Heartbeat``); tasks, ``status`` and the CLI read it
here, below the worker layer, so a task can ask whether any live node could take its work.
"""

from __future__ import annotations

import json
import time
from typing import Any

from distillq.storage import keys, records
from distillq.storage.node_records import NodeInfo, NodeView

GONE_AFTER = 3  # missed intervals before a node shows as gone
FORGET_AFTER = 10  # missed intervals before its entry expires from Redis


def list_nodes(redis_client: Any) -> list[NodeView]:
    nodes = []
    now = time.time()
    for key in redis_client.scan_iter(match=keys.node_pattern(), count=500):
        raw = redis_client.get(key)
        if raw:
            info = records.from_json(NodeInfo, json.loads(raw), key.decode())
            age = round(now - info.heartbeat_at, 1)
            state = "up" if age <= GONE_AFTER * info.interval else "gone"
            nodes.append(NodeView(info, age, state))
    return sorted(nodes, key=lambda n: n.info.hostname)


def up_on(redis_client: Any, queue: str) -> set[str]:
    """Hostnames of the live nodes that consume ``queue``."""
    return {
        n.info.hostname
        for n in list_nodes(redis_client)
        if n.state == "up" and queue in n.info.queues
    }


def unheard(redis_client: Any, queues: list[str]) -> list[str]:
    """A line of help for each of ``queues`` that no live node consumes: work queued there
    waits for a worker, which is not an error, but the user should know to start one."""
    nodes = [n for n in list_nodes(redis_client) if n.state == "up"]
    return [
        f"no worker is listening on queue {q} ({len(nodes)} nodes registered): start one with "
        "`distillq worker` or `distillq up`"
        for q in queues
        if not any(q in n.info.queues for n in nodes)
    ]
