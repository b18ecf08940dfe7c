"""`distillq demo` stopped mid-run by SIGTERM (timeout, systemd, CI, docker stop) or killed
outright leaves no process behind: its Redis, its workers and their pool children are gone
within 30 s."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from distillq.core.runtime.settings import Settings


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_stopped_demo_leaves_no_process(tmp_path, sig):
    env = {**os.environ, **Settings(broker_url="", storage=tmp_path / "storage").to_env()}
    env.pop("DISTILLQ_BROKER_URL", None)  # the demo starts its own Redis
    log = (tmp_path / "demo.log").open("wb")
    demo = subprocess.Popen(
        [sys.executable, "-m", "distillq", "demo", "--quick"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        # Mid-run: Redis, both workers and their pool children are up, and the job is queued.
        # The deadline moves while the demo makes progress (its log grows), not on a clock.
        tree: list[psutil.Process] = []
        last_size, last_move = 0, time.time()
        while True:
            tree = psutil.Process(demo.pid).children(recursive=True)
            names = " ".join(" ".join(p.cmdline()) for p in tree if not gone(p.pid))
            up = names.count("distillq worker") >= 2 and "redis-server" in names and len(tree) >= 5
            if up and "job " in (tmp_path / "demo.log").read_text():
                break
            size = (tmp_path / "demo.log").stat().st_size
            if size != last_size:
                last_size, last_move = size, time.time()
            assert demo.poll() is None, (tmp_path / "demo.log").read_text()[-2000:]
            assert time.time() - last_move < 120, "the demo made no progress for 120 s"
            time.sleep(0.5)
        pids = [p.pid for p in tree]
        os.kill(demo.pid, sig)
        deadline = time.time() + 30
        while not all(gone(p) for p in pids) and time.time() < deadline:
            time.sleep(0.2)
        left = {p: " ".join(psutil.Process(p).cmdline()) for p in pids if not gone(p)}
        assert not left, left
        demo.wait(10)
    finally:
        for p in psutil.Process(os.getpid()).children(recursive=True):
            if p.pid == demo.pid or p.pid in [q.pid for q in tree]:
                p.kill()
