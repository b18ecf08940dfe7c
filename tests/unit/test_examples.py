"""Every recipe in examples/ is a spec distillq accepts as written, so none rots."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from distillq.core.job.load import apply_override, spec_from_dict

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))


def test_there_are_recipes():
    names = {p.stem for p in EXAMPLES}
    assert {
        "cpu-cluster",
        "gpu-plus-cpus",
        "served-vllm",
        "prompt-only",
        "sampled-targets",
    } <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_each_recipe_validates(path):
    raw = yaml.safe_load(path.read_text())
    # A from_job teacher is completed from that job at enqueue (core/job/reuse.py): stand in
    # what it fills, and validate the rest as written.
    if "from_job" in (raw.get("teacher") or {}):
        raw = {**raw, "dataset": "data/train.jsonl", "teacher": {"model": "models/teacher"}}
    # Every key and value as written (the model and data paths are the user's to fill in).
    spec = spec_from_dict(raw)
    assert spec.students and spec.name == raw["name"]
    apply_override(raw, "students.0.lr=1e-4")  # the CLI's --set reaches into it too
    assert spec_from_dict(raw).students[0].lr == 1e-4
