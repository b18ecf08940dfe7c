"""What a job logs to its trackers, called where each value is produced: a teacher shard's
throughput and cache size, each merged round's losses, learning rate, tokens/s and held-out
point, and at the end the report's table and the generations as text.

Steps are the track's global optimizer steps (the teacher's: the shard index). Callers pass
plain values (the job's ``report_to`` and paths): this room sits below the rest
of core, so a merge, a teacher task or finalize can each call it.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from distillq.core.track import registry
from distillq.core.track.tracker import Rows
from distillq.storage.layout import JobPaths
from distillq.storage.node_records import NodeView
from distillq.storage.records import RoundInfo, ShardStats
from distillq.storage.report_records import Report

Names = tuple[str, ...]


def teacher_shard(names: Names, paths: JobPaths, stats: ShardStats) -> None:
    values = {
        "teacher/tokens_per_s": stats.tokens_per_s,
        "teacher/cache_bytes": float(stats.bytes),
        "teacher/bytes_per_position": stats.bytes / max(1, stats.target_positions),
    }
    registry.log(names, paths, lambda t: t.scalars("teacher", [(stats.shard, values)]))


def round_merged(
    names: Names, paths: JobPaths, track: str, info: RoundInfo, step: int, lr: float
) -> None:
    """Every logged training step of the round (replicas averaged), then the round's own
    numbers (``lr``: the learning rate at ``step``) at the track's step after it."""
    if not names:
        return
    by_step: dict[int, list[list[float]]] = defaultdict(list)
    for point in info.curve:
        by_step[int(point[0])].append(list(point[1:]))
    seconds = max((r.seconds for r in info.replicas), default=0.0)
    tokens = sum(r.tokens for r in info.replicas)
    end: dict[str, float] = {
        "train/tokens_per_s": tokens / seconds if seconds > 0 else 0.0,
        "train/lr": lr,
    }
    if info.heldout is not None:
        end["heldout/loss"] = info.heldout

    rows: Rows = []
    for s, points in sorted(by_step.items()):
        n = len(points)
        loss, ce, kd = (sum(p[i] for p in points) / n for i in range(3))
        rows.append((s, {"loss/mixed": loss, "loss/ce": ce, "loss/kd": kd}))
    if rows and rows[-1][0] == step:
        rows[-1][1].update(end)
    else:
        rows.append((step, end))

    def write(t: Any) -> None:
        t.scalars(track, rows)

    registry.log(names, paths, write)


def nodes(names: Names, paths: JobPaths, seconds: int, views: list[NodeView]) -> None:
    """Each live node's RSS and CPU from its last heartbeat (run ``nodes``; step: seconds
    since the job was made), logged by the task that just finished a shard or a merge."""
    values = {}
    for n in views:
        if n.state == "up" and n.info.load is not None:
            values[f"rss_mb/{n.info.hostname}"] = n.info.load.rss_mb
            values[f"cpu_percent/{n.info.hostname}"] = n.info.load.cpu_percent
    if names and values:
        registry.log(names, paths, lambda t: t.scalars("nodes", [(seconds, values)]))


def finished(names: Names, paths: JobPaths, data: Report, table: str) -> None:
    """The report (``table``: its markdown) as text, each track's final held-out loss and its
    generations."""
    if not names:
        return

    def write(t: Any) -> None:
        t.text("report", "report", table)
        for name, st in data.students.items():
            if st.eval_loss is not None:
                t.scalars(name, [(st.steps, {"heldout/final": st.eval_loss})])
            gens = "\n\n".join(
                f"**prompt** {g.prompt!r}\n\n**{name}** {g.text!r}" for g in st.generations
            )
            if gens:
                t.text(name, "generations", gens, st.steps)

    registry.log(names, paths, write)
