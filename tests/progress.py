"""Deadlines that follow progress, not the clock: a slow or busy machine must not fail a test
whose job keeps moving, and a stuck one must still fail.

``Pulse`` watches the test's own directory (worker logs, job storage, server logs): while any
file there grows or appears, the test is making progress. A wait fails only after ``stall``
seconds in which nothing moved and its condition stayed false.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT: Path | None = None
"""The running test's tmp_path (set by an autouse fixture in conftest)."""

LOOK_EVERY = 1.0  # seconds between walks of the tree: a walk costs a few ms per 1,000 files


def _fingerprint(root: Path | None) -> tuple[int, int]:
    if root is None or not root.exists():
        return (0, 0)
    count = size = 0
    for p in root.rglob("*"):
        try:
            size += p.stat().st_size
            count += 1
        except OSError:  # removed while walking: that is movement too, seen next time
            pass
    return (count, size)


class Pulse:
    """``check(what)`` raises once nothing under ``root`` moved for ``stall`` seconds."""

    def __init__(self, stall: float, root: Path | None = None) -> None:
        self.stall, self.root = stall, root or ROOT
        self.last = _fingerprint(self.root)
        self.moved_at = self.looked_at = time.monotonic()

    def check(self, what: str) -> None:
        now = time.monotonic()
        if now - self.looked_at >= LOOK_EVERY:
            self.looked_at = now
            if (fp := _fingerprint(self.root)) != self.last:
                self.last, self.moved_at = fp, now
        if now - self.moved_at > self.stall:
            raise AssertionError(f"nothing moved for {self.stall:.0f} s while waiting for {what}")


def wait_for(pred: Callable[[], Any], stall: float, what: str, every: float = 0.1) -> Any:
    """Poll ``pred`` until it is truthy; fail once nothing moved for ``stall`` seconds."""
    pulse = Pulse(stall)
    while True:
        if value := pred():
            return value
        pulse.check(what)
        time.sleep(every)
