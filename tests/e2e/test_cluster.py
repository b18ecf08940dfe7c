"""The embedded defaults: `distillq up` / `down` and `distillq demo`, with nothing configured."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from distillq.core.runtime.settings import Settings
from distillq.workers.cluster import alive
from tests.conftest import run_cli
from tests.e2e.test_pipeline import enqueue


def flower_get(url: str, path: str, auth: tuple[str, str] | None) -> tuple[int, object]:
    import base64
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url + path)
    if auth:
        req.add_header(
            "Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode()
        )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, None
    except urllib.error.URLError:
        return 0, None  # not listening yet


def cmdlines(pids: list[int]) -> dict[int, str]:
    """/proc/<pid>/cmdline of ``pids`` and all their descendants."""
    import psutil

    out = {}
    for pid in pids:
        proc = psutil.Process(pid)
        for p in [proc, *proc.children(recursive=True)]:
            out[p.pid] = Path(f"/proc/{p.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return out


def test_up_enqueue_wait_down_with_no_broker_configured(tmp_path, make_spec):
    from distillq.workers.redis_server import free_port

    s = Settings(broker_url="", storage=tmp_path / "storage")
    res = run_cli(s, "up", "--workers", "2", "--flower-port", str(free_port()))
    assert res.returncode == 0, res.stderr
    state = json.loads((s.storage / "cluster.json").read_text())
    assert "Flower: " + state["flower_url"] in res.stdout
    assert (s.storage / "cluster.json").stat().st_mode & 0o077 == 0  # holds the Flower password
    auth = (state["flower_user"], state["flower_password"])
    try:
        assert state["broker_url"].startswith("redis://127.0.0.1:")
        deadline = time.time() + 60  # Flower must be listening before tasks run to see their events
        while True:
            code, workers = flower_get(state["flower_url"], "/api/workers?refresh=1", auth)
            if code == 200 and len(workers) == 2:
                break
            assert time.time() < deadline, (code, workers)
            time.sleep(1)
        assert flower_get(state["flower_url"], "/api/workers", None)[0] == 401
        # No secret in any process `up` started, children included: `ps` shows them to all.
        started = [*state["worker_pids"], *state["redis_pids"], state["flower_pid"]]
        for pid, cmdline in cmdlines(started).items():
            assert state["flower_password"] not in cmdline, (pid, cmdline)
        job_id = enqueue(s, make_spec())  # finds the cluster's broker by itself
        res = run_cli(s, "wait", job_id, "--stall", "180")
        assert res.returncode == 0, res.stderr
        nodes = json.loads(run_cli(s, "nodes", "--json").stdout)
        assert len(nodes) == 2 and all(n["state"] == "up" for n in nodes)
        code, tasks = flower_get(state["flower_url"], "/api/tasks", auth)
        names = {t["name"] for t in tasks.values() if job_id in (t.get("args") or "")}
        assert {"distillq.teacher_shard", "distillq.train_replica", "distillq.merge_round"} <= names
    finally:
        res = run_cli(s, "down")
    assert res.returncode == 0 and "2 worker(s) stopped" in res.stdout
    deadline = time.time() + 15
    pids = [*state["worker_pids"], *state["redis_pids"], state["flower_pid"]]
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


def test_up_with_sentinel_runs_a_job_through_sentinels_and_down_stops_them(tmp_path, make_spec):
    from distillq.workers.redis_server import free_port

    s = Settings(broker_url="", storage=tmp_path / "storage")
    res = run_cli(s, "up", "--sentinel", "--workers", "1", "--flower-port", str(free_port()))
    assert res.returncode == 0, res.stderr
    state = json.loads((s.storage / "cluster.json").read_text())
    try:
        assert state["broker_url"].count("sentinel://") == 3 and state["sentinel_master"]
        assert "Redis Sentinel: master" in res.stdout
        assert len(state["redis_pids"]) == 5  # a primary, a replica, three sentinels
        job_id = enqueue(s, make_spec(n_records=40, shards=2))  # finds the sentinels itself
        res = run_cli(s, "wait", job_id, "--stall", "180")
        assert res.returncode == 0, res.stderr
    finally:
        res = run_cli(s, "down")
    assert res.returncode == 0, res.stderr
    pids = [*state["worker_pids"], *state["redis_pids"], state["flower_pid"]]
    deadline = time.time() + 15
    while any(alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.2)
    assert not [p for p in pids if alive(p)]
