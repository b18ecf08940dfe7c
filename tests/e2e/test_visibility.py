"""What users see of a running cluster: node liveness and progress events."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

from distillq.core.runtime.settings import Settings
from tests.conftest import Workers, run_cli
from tests.e2e.test_pipeline import enqueue


def test_a_dead_node_shows_as_gone_then_disappears(redis_server, tmp_path):
    s = Settings(broker_url=redis_server, storage=tmp_path / "st", heartbeat_seconds=1)
    workers = Workers(s, tmp_path / "logs")
    try:
        proc = workers.start("student", "doomed")
        nodes = json.loads(run_cli(s, "nodes", "--json").stdout)
        assert [n["state"] for n in nodes if n["hostname"] == "doomed@test"] == ["up"]
        os.killpg(proc.pid, signal.SIGKILL)  # no warm shutdown: the heartbeat just stops
        states = []
        deadline = time.time() + 30
        while time.time() < deadline:
            nodes = json.loads(run_cli(s, "nodes", "--json").stdout)
            states.append(
                next((n["state"] for n in nodes if n["hostname"] == "doomed@test"), "absent")
            )
            if states[-1] == "absent":
                break
            time.sleep(0.5)
        assert "gone" in states and states[-1] == "absent", states
        assert "DOWN" not in run_cli(s, "nodes").stdout
    finally:
        workers.stop_all()


def test_progress_travels_as_celery_task_events(settings, make_spec, workers):
    from distillq.tasks.celery_app import app, configure

    configure(settings)
    seen: dict[str, list[dict]] = {"task-progress": [], "task-succeeded": []}
    stop = threading.Event()

    def listen() -> None:
        with app.connection_for_read() as conn:
            recv = app.events.Receiver(conn, handlers={k: seen[k].append for k in seen})
            while not stop.is_set():
                try:
                    recv.capture(limit=None, timeout=0.5, wakeup=False)
                except (TimeoutError, OSError):
                    continue

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    time.sleep(1)
    workers.start("teacher", "teacher")
    workers.start("student", "student")
    job_id = enqueue(settings, make_spec())
    assert run_cli(settings, "wait", job_id, "--stall", "180").returncode == 0
    time.sleep(1)
    stop.set()
    teacher = [e for e in seen["task-progress"] if e.get("task", "").startswith("teacher-")]
    replica = [e for e in seen["task-progress"] if e.get("task", "").startswith("replica-")]
    assert teacher and {"samples", "tokens", "tokens_per_s"} <= set(teacher[0])
    assert replica and {"step", "loss", "tokens_per_s"} <= set(replica[0])
