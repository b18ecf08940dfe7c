"""docker/compose.yaml as written, its services run as local processes (no Docker engine here).

Redis is a real redis-server with the compose file's settings (AOF, password); every distillq
service runs its own `command` with its own `environment`, with only what Docker would
provide swapped for local equivalents: the host `redis` → 127.0.0.1:<port>, the volume
/data → a temp dir, Flower's port → a free one. The one-shot enqueue gets `--quick`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import redis

from distillq.core.runtime.registry import list_nodes
from distillq.workers.launch import stop_process_group
from distillq.workers.redis_server import EmbeddedRedis, free_port
from tests.e2e.test_cluster import flower_get
from tests.unit.test_compose import ENV, load_compose

pytestmark = pytest.mark.slow


def test_compose_services_run_as_local_processes(tmp_path):
    compose = load_compose(ENV)
    services = compose["services"]
    redis_cmd = services["redis"]["command"]
    assert "--appendonly" in redis_cmd
    server = EmbeddedRedis(
        tmp_path / "redis", appendonly=True, password=ENV["DISTILLQ_REDIS_PASSWORD"]
    ).start()
    data, flower_port = tmp_path / "data", free_port()
    procs: list[subprocess.Popen] = []

    def env_of(svc: dict) -> dict[str, str]:
        env = {k: str(v) for k, v in svc["environment"].items()}
        env["DISTILLQ_BROKER_URL"] = env["DISTILLQ_BROKER_URL"].replace(
            "@redis:6379", f"@127.0.0.1:{server.port}"
        )
        env["DISTILLQ_STORAGE"] = env["DISTILLQ_STORAGE"].replace("/data", str(data))
        return {**os.environ, **env}

    def command_of(svc: dict) -> list[str]:
        cmd = [str(c) for c in svc["command"]]
        return [c if c != "5555" else str(flower_port) for c in cmd]

    try:
        for name in ("flower", "teacher", "student-1", "student-2"):
            log = (tmp_path / f"{name}.log").open("ab")
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "distillq", *command_of(services[name])],
                    env=env_of(services[name]),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        r = redis.Redis.from_url(server.url)
        deadline = time.time() + 120
        while len(list_nodes(r)) < 3:
            assert time.time() < deadline, [
                (tmp_path / f"{n}.log").read_text()[-1500:] for n in ("teacher", "student-1")
            ]
            time.sleep(0.5)
        one_shot = services["enqueue-demo"]
        res = subprocess.run(
            [sys.executable, "-m", "distillq", *command_of(one_shot), "--quick"],
            env=env_of(one_shot),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert res.returncode == 0, res.stderr[-3000:]
        job_id = res.stdout.strip().splitlines()[-1]
        res = subprocess.run(
            [sys.executable, "-m", "distillq", "wait", job_id, "--stall", "180"],
            env=env_of(one_shot),
            capture_output=True,
            text=True,
            timeout=660,
        )
        assert res.returncode == 0, (
            res.stderr[-3000:] + (tmp_path / "student-1.log").read_text()[-3000:]
        )
        assert (data / "jobs" / job_id / "report.json").exists()
        url = f"http://127.0.0.1:{flower_port}"
        assert flower_get(url, "/api/workers", None)[0] == 401
        assert flower_get(url, "/api/workers", ("admin", ENV["DISTILLQ_FLOWER_PASSWORD"]))[0] == 200
    finally:
        for p in procs:
            stop_process_group(p)
        server.stop()
