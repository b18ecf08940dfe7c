"""Tracker names are checked at enqueue, and a tracker that fails is one warning, never a
failed task."""

from __future__ import annotations

import logging

import pytest

from distillq.core.track import registry
from distillq.errors import SpecError
from distillq.storage.layout import job_paths


def test_an_unknown_tracker_is_refused_naming_the_choices():
    with pytest.raises(SpecError, match=r"report_to: 'wandbb' .*choose from .*tensorboard"):
        registry.check(["wandbb"])
    registry.check(["tensorboard", "mlflow", "trackio"])  # installed with the dev extra
    with pytest.raises(SpecError, match=r"report_to: wandb .*name tensorboard .*wandb sync"):
        registry.check(["wandb"])


def test_a_failing_tracker_is_one_warning(tmp_path, caplog):
    def write(t):
        raise OSError("disk full\nsecond line of a traceback")

    with caplog.at_level(logging.WARNING):
        registry.log(("tensorboard",), job_paths(tmp_path, "j"), write)  # does not raise
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == ["tracker tensorboard failed, the job goes on: disk full"]


def test_no_trackers_writes_nothing(tmp_path):
    registry.log((), job_paths(tmp_path, "j"), lambda t: t.scalars("s", [(1, {"x": 1.0})]))
    assert not any(tmp_path.iterdir())
