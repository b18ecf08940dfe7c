"""The teacher cache as an asset, through real workers: a job with no students builds it and
stops; a later job trains on it (two dataset epochs) and runs no teacher task, which the
workers' own task events show; a spec that does not fit the cache is refused in one line; a
cache another job reads cannot be removed. And a real GGUF teacher (SmolLM2 Q4_1) end to end."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import yaml

from distillq.core.job.jobs import load_job
from distillq.storage import checkpoints
from distillq.storage.records import read_if_exists
from distillq.storage.report_records import Report
from distillq.tasks.celery_app import app
from tests.conftest import run_cli, write_jsonl
from tests.e2e.test_pipeline import enqueue


class TaskEvents:
    """Every task a worker receives (``task-received`` events, as Flower sees them)."""

    def __init__(self, broker_url: str) -> None:
        self.url, self.seen, self.ready = broker_url, [], threading.Event()
        self._stop = False

    def __enter__(self) -> TaskEvents:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(30), "event receiver did not start"
        return self

    def _run(self) -> None:
        with app.connection_for_read(self.url) as conn:
            recv = app.events.Receiver(conn, handlers={"task-received": self.seen.append})
            self.ready.set()
            for _ in recv.itercapture(limit=None, timeout=None, wakeup=False):
                if self._stop:
                    return

    def __exit__(self, *exc: object) -> None:
        self._stop = True

    def names(self, job_id: str) -> list[str]:
        return [e["name"] for e in self.seen if job_id in str(e.get("args", ""))]


@pytest.fixture
def teacher_only(settings, tmp_path, tiny_models, text_records) -> dict[str, Any]:
    data = write_jsonl(tmp_path / "d.jsonl", text_records[:48])
    return {
        "name": "cache", "dataset": str(data), "shards": 2, "eval_fraction": 0.1,
        "teacher": {"model": tiny_models["teacher"], "top_k": 8, "max_length": 96},
        "students": [],
    }  # fmt: skip


def _write(tmp_path, name: str, spec: dict) -> Any:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _wait(settings, job_id: str, workers) -> None:
    res = run_cli(settings, "wait", job_id, "--stall", "180")
    assert res.returncode == 0, res.stderr + workers.log("teacher") + workers.log("student")


def _run_to_report(settings, workers, tmp_path, name: str, spec: dict) -> tuple[Any, Report]:
    """Teacher and student workers, the job enqueued and waited for; the job and its report."""
    workers.start("teacher", "teacher")
    workers.start("student", "student")
    job_id = enqueue(settings, _write(tmp_path, name, spec))
    _wait(settings, job_id, workers)
    job = load_job(settings.storage, job_id)
    report = read_if_exists(Report, job.paths.report)
    assert report is not None
    return job, report


def test_a_cache_only_job_then_a_job_on_its_cache_runs_no_teacher_task(
    settings, workers, tmp_path, tiny_models, teacher_only
):
    job, report = _run_to_report(settings, workers, tmp_path, "first", teacher_only)
    first = job.id
    assert report.students == {}
    assert report.teacher is not None and report.teacher.eval_loss is not None
    assert report.cache.bytes > 0
    md = job.paths.report_md.read_text()
    assert "held-out CE" in md and "MB over" in md

    second_spec = {
        "name": "reuse",
        "teacher": {"from_job": first},
        "students": [{"name": "s", "model": tiny_models["student"], "peft": {"method": "lora", "r": 4},
                      "batch_size": 8, "dataset_epochs": 2}],
    }  # fmt: skip
    with TaskEvents(settings.broker_url) as events:
        res = run_cli(settings, "enqueue", str(_write(tmp_path, "second", second_spec)))
        assert res.returncode == 0, res.stderr
        assert "queued 0 teacher shards, 2 read from job" in res.stderr
        second = res.stdout.strip().splitlines()[-1]
        _wait(settings, second, workers)
    names = events.names(second)
    assert "distillq.train_replica" in names and "distillq.finalize" in names
    assert not [n for n in names if n.startswith("distillq.teacher")], names
    reused = load_job(settings.storage, second)
    assert reused.info.cache_job == first
    assert reused.paths.shard(0) == job.paths.shard(0)
    # Two dataset epochs: every shard twice, in the same order, from the cache.
    assert checkpoints.merged_shards(reused.paths, "s") == {0, 1, 2, 3}
    ckpt = checkpoints.latest(reused.paths, "s")
    assert ckpt is not None
    order = ckpt.meta.merged_shards
    assert [r % 2 for r in order[:2]] == [r % 2 for r in order[2:]]
    status = json.loads(run_cli(settings, "status", second, "--json").stdout)
    assert status["tracks"]["s"]["rounds"] == 4

    # Sharing is listed, and the cache cannot be removed under its reader.
    listing = run_cli(settings, "jobs").stdout
    assert f"its cache is read by {second}" in listing and f"reads the cache of {first}" in listing
    res = run_cli(settings, "remove", first)
    assert (
        res.returncode != 0 and second in res.stderr and len(res.stderr.strip().splitlines()) == 1
    )
    assert job.paths.shard(0).exists()

    # A spec that does not fit the cache: one line naming the field; nothing created.
    before = sorted(p.name for p in (settings.storage / "jobs").iterdir())
    for over, field in (
        ({"top_k": 16}, "teacher.top_k"),
        ({"max_length": 64}, "teacher.max_length"),
    ):
        bad = {**second_spec, "teacher": {"from_job": first, **over}}
        res = run_cli(settings, "enqueue", str(_write(tmp_path, "bad", bad)))
        assert res.returncode != 0
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and field in lines[0] and first in lines[0], res.stderr
    res = run_cli(settings, "enqueue", str(_write(tmp_path, "bad", {**second_spec, "shards": 3})))
    assert res.returncode != 0 and "shards=3" in res.stderr
    assert sorted(p.name for p in (settings.storage / "jobs").iterdir()) == before

    # The reader goes first; then the cache may go.
    assert run_cli(settings, "remove", second).returncode == 0
    assert run_cli(settings, "remove", first).returncode == 0
    assert not job.paths.root.exists()


def test_a_real_quantized_gguf_teacher_end_to_end(
    settings, workers, tmp_path, smollm2_gguf, smollm2_student, text_records
):
    """SmolLM2-135M-Instruct Q4_1 (no BOS, V = 49,152) as the teacher, in the teacher worker."""
    spec = {
        "name": "smol", "dataset": str(write_jsonl(tmp_path / "d.jsonl", text_records[:24])),
        "shards": 2, "eval_fraction": 0.15,
        "teacher": {"model": str(smollm2_gguf), "top_k": 16, "max_length": 64, "batch_size": 4},
        "students": [{"name": "s", "model": smollm2_student, "peft": {"method": "lora", "r": 4},
                      "batch_size": 4}],
    }  # fmt: skip
    job, report = _run_to_report(settings, workers, tmp_path, "smol", spec)
    assert report.teacher is not None
    assert report.teacher.quantization == "q4_1"
    # The teacher's greedy continuations of held-out prompts (llama.cpp, batched), for the report.
    assert report.teacher.generations and all(g.text for g in report.teacher.generations)
    assert report.cache.sources == ["gguf q4_1"]
    # A real English model: its held-out CE on English text is far below uniform (ln V ≈ 10.8).
    assert report.teacher.eval_loss is not None and report.teacher.eval_loss < 5.0
    assert "q4_1" in job.paths.report_md.read_text()
