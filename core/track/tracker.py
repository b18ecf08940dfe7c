"""The tracker protocol: one small interface a backend implements, chosen by name.

A backend writes where the value is produced (a merge, a teacher shard, finalize), from
whichever node, and holds no connection between calls: each call opens, writes and closes.
"""

from __future__ import annotations

from typing import Protocol


class Tracker(Protocol):
    def scalars(self, run: str, step: int, values: dict[str, float]) -> None:
        """``values`` (tag → number) at ``step`` of ``run`` (a track, or "teacher")."""
        ...

    def text(self, run: str, tag: str, text: str, step: int = 0) -> None:
        """Markdown text (the report's table, the generations)."""
        ...
