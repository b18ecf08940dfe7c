"""Trackio (Hugging Face's local-first tracker): a SQLite database per job under the storage's
``trackio/`` directory (or ``$TRACKIO_DIR``), one run per track; ``trackio show --project
<job>`` opens its dashboard. Nothing reaches the internet: no Space is named.

Trackio keeps one current run per process, so each call opens the run, logs and finishes it;
its file lock orders writers of one project.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any

from distillq.core.track.tracker import Rows


class Trackio:
    name = "trackio"

    def __init__(self, root: Path, project: str) -> None:
        # Trackio reads its directory when first imported; a worker serves one storage.
        os.environ.setdefault("TRACKIO_DIR", str(root))
        self.project = project

    @contextlib.contextmanager
    def _run(self, run: str) -> Any:
        import trackio

        quiet = io.StringIO()  # it prints a line per init and finish: not for worker logs
        with contextlib.redirect_stdout(quiet):
            trackio.init(project=self.project, name=run, resume="allow", embed=False,
                         auto_log_gpu=False, auto_log_cpu=False)  # fmt: skip
            try:
                yield trackio
            finally:
                trackio.finish()

    def scalars(self, run: str, rows: Rows) -> None:
        with self._run(run) as t:
            for step, values in rows:
                t.log({k: float(v) for k, v in values.items()}, step=step)

    def text(self, run: str, tag: str, text: str, step: int = 0) -> None:
        with self._run(run) as t:
            t.log({tag: t.Markdown(text)}, step=step)
