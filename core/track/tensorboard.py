"""TensorBoard: event files under the job's storage, one run (directory) per track.

Each call writes its own event file (TensorBoard merges every file of a run's directory), so
any node may log without coordinating with another: a merge on one node, a teacher shard on
another. ``tensorboard --logdir <storage>/jobs/<job>/tensorboard`` shows them.
"""

from __future__ import annotations

from pathlib import Path


class TensorBoard:
    name = "tensorboard"

    def __init__(self, root: Path) -> None:
        # Imported here: only jobs that name the backend need the package.
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter
        self.root = root

    def scalars(self, run: str, step: int, values: dict[str, float]) -> None:
        w = self._writer(log_dir=str(self.root / run))
        try:
            for tag, v in values.items():
                w.add_scalar(tag, v, global_step=step)
        finally:
            w.close()

    def text(self, run: str, tag: str, text: str, step: int = 0) -> None:
        w = self._writer(log_dir=str(self.root / run))
        try:
            w.add_text(tag, text, global_step=step)
        finally:
            w.close()
