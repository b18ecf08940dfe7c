"""A test's folder sets its markers (tests/conftest.py): `make test-fast` selects with
``-m "not e2e"`` and must be able to trust that nothing in e2e/ slips through."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def collected(*args: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    return [line for line in out.stdout.splitlines() if "::" in line]


def test_every_test_in_a_folder_carries_its_folders_markers():
    e2e = collected("tests/e2e")
    assert e2e, "no e2e tests collected"
    assert collected("-m", "not e2e", "tests/e2e") == []
    assert collected("-m", "not integration", "tests/e2e", "tests/integration") == []
    assert collected("-m", "e2e", "tests/integration") == []
