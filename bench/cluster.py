"""A real Redis + real worker processes for the benchmarks that go through Celery."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from distillq.core.create import create_job
from distillq.core.job.jobs import Job, load_job
from distillq.core.job.load import load_spec
from distillq.core.runtime import broker
from distillq.core.runtime.settings import Settings
from distillq.storage import keys
from distillq.tasks import pipeline
from distillq.tasks.celery_app import app, configure
from distillq.tasks.sending import fresh_pools
from distillq.workers.launch import spawn_worker, stop_process_group
from distillq.workers.redis_server import EmbeddedRedis


class Cluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.redis = EmbeddedRedis(root / "redis").start()
        self.settings = Settings(broker_url=self.redis.url, storage=root / "storage")
        configure(self.settings)
        fresh_pools(app)  # a second cluster in one process: no connection to the first's Redis
        self.procs: dict[str, Any] = {}

    def worker(self, name: str, queues: str, threads: int = 1) -> None:
        p = spawn_worker(
            self.settings,
            queues.split(","),
            self.root / "logs" / f"{name}.log",
            threads=threads,
            hostname=f"{name}@bench",
        )
        self.procs[name] = p
        r = broker.client(self.settings.broker_url, self.settings.sentinel_master)
        deadline = time.time() + 120
        while not r.exists(keys.node(f"{name}@bench")):
            if time.time() > deadline or p.poll() is not None:
                raise RuntimeError(f"bench worker {name} did not start")
            time.sleep(0.1)

    def stop(self, name: str) -> None:
        stop_process_group(self.procs.pop(name))

    def job(self, spec: dict[str, Any]) -> Job:
        path = self.root / f"{spec['name']}.yaml"
        path.write_text(yaml.safe_dump(spec))
        return create_job(self.settings.storage, load_spec(path))

    def submit(self, job: Job) -> None:
        pipeline.submit(app, job)

    def wait_done(self, job: Job, timeout: float = 1800) -> float:
        t = time.time()
        while not job.paths.report.exists():
            if job.paths.failures_dir.exists() and any(job.paths.failures_dir.iterdir()):
                raise RuntimeError(
                    f"bench job {job.id} failed: {list(job.paths.failures_dir.iterdir())}"
                )
            if time.time() - t > timeout:
                raise TimeoutError(job.id)
            time.sleep(0.2)
        return time.time() - t

    def reload(self, job: Job) -> Job:
        return load_job(self.settings.storage, job.id)

    def close(self) -> None:
        for name in list(self.procs):
            self.stop(name)
        self.redis.stop()


@contextmanager
def cluster(root: Path) -> Iterator[Cluster]:
    c = Cluster(root)
    try:
        yield c
    finally:
        c.close()


def run_job(root: Path, spec: dict[str, Any], timeout: float = 5400) -> tuple[Job, float]:
    """``spec`` through a cluster of two workers (a: teacher then student, b: student) to its
    end; the job and its wall seconds."""
    return run_jobs(root, [spec], timeout)[0]


def run_jobs(
    root: Path, specs: list[dict[str, Any]], timeout: float = 5400
) -> list[tuple[Job, float]]:
    """``specs`` submitted together to one cluster of two workers, each to its end: the jobs
    and the wall seconds from the submission to each one's end."""
    with cluster(root) as c:
        c.worker("a", "teacher,student")
        c.worker("b", "student")
        jobs = [c.job(spec) for spec in specs]
        t0 = time.time()
        for job in jobs:
            c.submit(job)
        out = []
        for job in jobs:
            c.wait_done(job, timeout=timeout)
            out.append((job, time.time() - t0))
        return out
