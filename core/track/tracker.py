"""The tracker protocol: one small interface a backend implements, chosen by name.

A backend writes where the value is produced (a merge, a teacher shard, finalize), from
whichever node, and holds no connection between calls: each call opens, writes and closes.
"""

from __future__ import annotations

from typing import Protocol

Rows = list[tuple[int, dict[str, float]]]
"""(step, {tag: number}) in rising step order."""


class Tracker(Protocol):
    def scalars(self, run: str, rows: Rows) -> None:
        """Numbers of ``run`` (a track, "teacher", "nodes") at their steps, as one write."""
        ...

    def text(self, run: str, tag: str, text: str, step: int = 0) -> None:
        """Markdown text (the report's table, the generations)."""
        ...
