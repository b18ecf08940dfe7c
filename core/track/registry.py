"""Tracker backends by name (``report_to``), and the one call sites use: ``log``.

A tracker that fails never fails the job: its error is one warning line in the worker's log.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from typing import Any

from distillq.core.track.tracker import Tracker
from distillq.errors import SpecError
from distillq.storage.layout import JobPaths

logger = logging.getLogger(__name__)

BACKENDS: dict[str, tuple[str, str]] = {
    # name: (module that must be importable, the install that provides it)
    "tensorboard": ("tensorboard", "pip install 'distillq[tensorboard]'"),
    "mlflow": ("mlflow", "pip install 'distillq[mlflow]'"),
    "trackio": ("trackio", "pip install 'distillq[trackio]'"),
}


def check(names: tuple[str, ...] | list[str]) -> None:
    """At enqueue: every named backend is known and installed here. Raises SpecError."""
    for name in names:
        if name == "wandb":
            raise SpecError(
                "report_to: wandb runs are not written here (W&B's offline runs can only be read "
                "by its service); name tensorboard and import its logs with `wandb sync` on "
                "the job's tracking/tensorboard directory"
            )
        if name not in BACKENDS:
            raise SpecError(
                f"report_to: {name!r} is not a tracker distillq has; choose from "
                f"{', '.join(sorted(BACKENDS))}"
            )
        module, install = BACKENDS[name]
        if importlib.util.find_spec(module) is None:
            raise SpecError(f"report_to: {name} needs the {module} package: {install}")


def _make(name: str, paths: JobPaths) -> Tracker:
    if name == "tensorboard":
        from distillq.core.track.tensorboard import TensorBoard

        return TensorBoard(paths.tracking_dir / "tensorboard")  # a run directory per track
    if name == "mlflow":
        from distillq.core.track.mlflow import Mlflow

        return Mlflow(paths.tracking_dir, experiment=paths.job_id)
    if name == "trackio":
        from distillq.core.track.trackio import Trackio

        return Trackio(paths.trackio_dir, project=paths.job_id)
    raise KeyError(name)


def log(names: Any, paths: JobPaths, write: Callable[[Tracker], None]) -> None:
    """``write`` to each backend in ``names`` (the job's ``report_to``). Never raises."""
    for name in names or ():
        try:
            write(_make(name, paths))
        except Exception as e:  # a tracker must never fail the job
            logger.warning("tracker %s failed, the job goes on: %s", name, str(e).split("\n")[0])
