"""TensorBoard: event files under the job's storage, one run (directory) per track.

Each call writes its own event file, so any node may log without coordinating with another:
a merge on one node, a teacher shard on another. TensorBoard reads a run's files in name order
and, where a step comes back lower than one it has seen, drops the later points (its data
server takes that for a restarted run). So a file is named by its first step, zero-padded:
``events.out.tfevents.<step>.<host>.<pid>.<n>``; rounds log rising steps, and name order is
step order. ``tensorboard --logdir <storage>/jobs/<job>/tracking/tensorboard`` shows them.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distillq.core.track.tracker import Rows

MARK = "tfevents."


class TensorBoard:
    name = "tensorboard"

    def __init__(self, root: Path) -> None:
        # Imported here: only jobs that name the backend need the package.
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter
        self.root = root

    def _write(self, run: str, step: int, body: Callable[[Any], None]) -> None:
        target = self.root / run
        target.mkdir(parents=True, exist_ok=True)
        # Written aside (not in a run directory TensorBoard watches), then moved in whole.
        aside = Path(tempfile.mkdtemp(prefix=".tb-", dir=self.root.parent))
        try:
            w = self._writer(log_dir=str(aside))
            try:
                body(w)
            finally:
                w.close()
            for f in aside.iterdir():
                rest = f.name.split(MARK, 1)[1].split(".", 1)[1]  # host.pid.n, after the time
                f.rename(target / f"events.out.{MARK}{step:012d}.{rest}")
        finally:
            shutil.rmtree(aside, ignore_errors=True)

    def scalars(self, run: str, rows: Rows) -> None:
        def body(w: Any) -> None:
            for step, values in rows:
                for tag, v in values.items():
                    w.add_scalar(tag, v, global_step=step)

        if rows:
            self._write(run, rows[0][0], body)

    def text(self, run: str, tag: str, text: str, step: int = 0) -> None:
        self._write(run, step, lambda w: w.add_text(tag, text, global_step=step))
