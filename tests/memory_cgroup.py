"""A memory cgroup for a test's worker: a node with a real memory limit, whose kernel OOM killer
ends a pool process that takes more (the way a 16 GB box ends a batch too big for it)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from distillq.core.runtime import memory


class MemoryCgroup:
    def __init__(self, path: Path, version: int) -> None:
        self.path, self.version = path, version

    @classmethod
    def make(cls, name: str, limit_mb: int) -> MemoryCgroup:
        """A child of this process's own memory cgroup with ``limit_mb``; skips the test where
        this machine does not let it be made (no cgroup, or not root)."""
        found = memory._own_cgroup()
        if found is None:
            pytest.skip("no memory cgroup on this machine: the OOM killer cannot be aimed")
        parent, version = found
        path = parent / name
        try:
            path.mkdir(exist_ok=True)
            limit = "memory.max" if version == 2 else "memory.limit_in_bytes"
            (path / limit).write_text(str(limit_mb * 2**20))
        except OSError as e:
            pytest.skip(f"cannot make a memory cgroup under {parent}: {e}")
        return cls(path, version)

    def enter(self) -> Callable[[], None]:
        """A ``preexec_fn``: the worker (and the pool processes it forks) join the cgroup."""
        procs = self.path / "cgroup.procs"

        def join() -> None:
            procs.write_text(str(os.getpid()))

        return join

    def remove(self) -> None:
        """Once its processes are gone (the kernel refuses to remove a cgroup in use)."""
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)
