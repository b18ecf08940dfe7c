"""Typed records of worker nodes, as they register in Redis (writer: ``workers/node.py``;
readers: ``core/runtime/registry.py``, ``distillq nodes``, placement)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from distillq.storage.records import to_json


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_mb: int


@dataclass(frozen=True)
class NodeLoad:
    """What a node is using now, measured at each heartbeat."""

    cpu_percent: float
    """The whole machine's CPU use since the last beat (all cores: 100% each)."""
    rss_mb: float
    """Resident memory of the worker and its pool processes."""
    gpu_used_mb: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class NodeInfo:
    """``keys.node(hostname)`` in Redis: a worker node's registry entry.

    Writer: ``workers.node.Heartbeat`` (every beat); reader: ``workers.node.list_nodes``.
    """

    hostname: str
    host: str
    pid: int
    cpus: int
    ram_gb: float
    queues: list[str]
    concurrency: int
    version: str
    started_at: float
    gpus: list[Gpu] = field(default_factory=list)
    heartbeat_at: float = 0.0
    interval: float = 10.0
    load: NodeLoad | None = None


@dataclass(frozen=True)
class NodeView:
    """A registry entry as `nodes` shows it: ``state`` is up, or gone after missed beats."""

    info: NodeInfo
    age_s: float
    state: str

    def to_json(self) -> dict[str, Any]:
        return {**to_json(self.info), "age_s": self.age_s, "state": self.state}
