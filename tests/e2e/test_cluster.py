"""The embedded defaults: `distillq up` / `down` and `distillq demo`, with nothing configured."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from app.settings import Settings
from tests.conftest import run_cli
from tests.e2e.test_pipeline import enqueue
from workers.cluster import alive

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def test_up_enqueue_wait_down_with_no_broker_configured(tmp_path, make_spec):
    s = Settings(broker_url="", storage=tmp_path / "storage")
    res = run_cli(s, "up", "--workers", "2")
    assert res.returncode == 0, res.stderr
    state = json.loads((s.storage / "cluster.json").read_text())
    try:
        assert state["broker_url"].startswith("redis://127.0.0.1:")
        job_id = enqueue(s, make_spec())  # finds the cluster's broker by itself
        res = run_cli(s, "wait", job_id, "--timeout", "300")
        assert res.returncode == 0, res.stderr
        nodes = json.loads(run_cli(s, "nodes", "--json").stdout)
        assert len(nodes) == 2
    finally:
        res = run_cli(s, "down")
    assert res.returncode == 0 and "2 worker(s) stopped" in res.stdout
    deadline = time.time() + 15
    pids = [*state["worker_pids"], state["redis_pid"]]
    while any(alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.2)
    leftover = [p for p in pids if alive(p)]
    for p in leftover:
        os.kill(p, signal.SIGKILL)
    assert not leftover


@pytest.mark.slow
def test_quick_demo_runs_end_to_end(tmp_path):
    s = Settings(broker_url="", storage=tmp_path / "demo")
    res = run_cli(s, "demo", "--quick", timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "embedded Redis" in res.stdout
    assert "held-out" in res.stdout and "demo wall time" in res.stdout
    job_dir = next((s.storage / "jobs").iterdir())
    report = json.loads((job_dir / "report.json").read_text())
    assert set(report["students"]) == {"kd", "ce"}
    assert report["students"]["kd"]["steps"] == report["students"]["ce"]["steps"]
    assert (job_dir / "report.png").exists()
