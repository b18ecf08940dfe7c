"""Teacher and student tokens/s through real Celery tasks ÷ bare loops of the same work.

Both sides use one torch thread, the same model, the same samples in the same batches.
The distillq side is timed from sending the task to receiving its result, so it includes the
Celery round trip, tokenisation, the top-k, the HDF5 write (teacher) and the cache read, KD
loss, optimizer and checkpoint write (student). Each side is warmed up once first.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from bench.cluster import Cluster
from bench.common import batches, dataset, models, samples
from distillq.core.job.models import load_causal_lm, load_tokenizer
from distillq.core.runtime import broker, live
from distillq.core.targets.shard import Shard
from distillq.storage import checkpoints
from distillq.tasks.celery_app import app

BATCH = 16


def spec(
    root: Path, records: int, shards: int, name: str, method: str = "full", alpha: float = 0.1
) -> dict[str, Any]:
    m = models(root)
    student = {
        "name": "s",
        "model": m["student"],
        "peft": {"method": method},
        "batch_size": BATCH,
        "lr": 3e-3,
    }
    return {
        "name": name,
        "dataset": str(dataset(root, records)),
        "shards": shards,
        "eval_fraction": 0.0,
        # float32 as the bare loop: the ratio measures the task around equal compute
        "teacher": {
            "model": m["teacher"],
            "top_k": 64,
            "batch_size": BATCH,
            "max_length": 256,
            "dtype": "float32",
        },
        "students": [student],
        "loss": {"alpha": alpha},
    }


def _timed(sig: Any, timeout: float = 900) -> tuple[dict[str, Any], float]:
    t = time.perf_counter()
    result = sig.apply_async().get(timeout=timeout)
    return result, time.perf_counter() - t


@torch.no_grad()
def bare_teacher(root: Path, records_path: Path) -> float:
    m = models(root)
    model, tok = load_causal_lm(m["teacher"]), load_tokenizer(m["teacher"])
    ss = samples(records_path, tok)
    warm = next(batches(ss, BATCH))
    model(input_ids=warm[0], attention_mask=warm[1])
    t = time.perf_counter()
    for ids, mask, *_ in batches(ss, BATCH):
        model(input_ids=ids, attention_mask=mask)
    return sum(len(s.input_ids) for s in ss) / (time.perf_counter() - t)


def bare_student(root: Path, shard_file: Path) -> float:
    """Plain CE training of the same student on the same padded batches: model(labels=...)."""
    model = build_student(root)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    with Shard(shard_file) as r:
        bs = [r.batch(i, min(i + BATCH, len(r))) for i in range(0, len(r), BATCH)]
    ids, mask = (
        torch.from_numpy(bs[0].padded.input_ids),
        torch.from_numpy(bs[0].padded.attention_mask),
    )
    model(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()
    opt.zero_grad()
    t = time.perf_counter()
    tokens = 0
    for b in bs:
        ids, mask = torch.from_numpy(b.padded.input_ids), torch.from_numpy(b.padded.attention_mask)
        labels = ids.masked_fill(mask == 0, -100)
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += int(mask.sum())
    return tokens / (time.perf_counter() - t)


def build_student(root: Path) -> Any:
    from distillq.core.job.spec import PeftSpec, StudentSpec
    from distillq.core.student.train import build

    return build(StudentSpec(name="s", model=models(root)["student"], peft=PeftSpec(method="full")))


def measure(root: Path, cluster: Cluster, records: int = 480, repeats: int = 3) -> dict[str, Any]:
    """Best of ``repeats`` for each side, the two sides interleaved, so a slow spell on a
    shared machine cannot land on one side only."""
    job = _job(root, cluster, records)
    return {
        "repeats": repeats,
        "teacher": measure_teacher(root, cluster, job, repeats),
        "student": measure_student(root, cluster, job, repeats),
    }


def _job(root: Path, cluster: Cluster, records: int) -> Any:
    torch.set_num_threads(1)
    job = cluster.job(spec(root, records, shards=2, name="eff"))
    shard_records = root / "eff-shard1.jsonl"
    lines = job.paths.dataset.read_text().splitlines()
    shard_records.write_text("".join(lines[int(i)] + "\n" for i in job.split.shard_ids(1)))
    return job


def measure_teacher(root: Path, cluster: Cluster, job: Any, repeats: int) -> dict[str, Any]:
    """Teacher shard task (shard 1, rewritten each repeat) vs the bare forward loop."""
    cluster.worker("teacher", "teacher")
    _timed(app.signature("distillq.teacher_shard", args=(job.id, 0)))  # warm-up: model load
    teacher_runs, bare_t = [], []
    r = broker.client(cluster.settings.broker_url, cluster.settings.sentinel_master)
    for _ in range(repeats):
        live.reset_attempts(r, job.id)  # deliberate repeats of one task, not redeliveries
        job.paths.shard(1).unlink(missing_ok=True)
        job.paths.shard_stats(1).unlink(missing_ok=True)
        res, wall = _timed(app.signature("distillq.teacher_shard", args=(job.id, 1)))
        teacher_runs.append(res["tokens"] / wall)
        bare_t.append(bare_teacher(root, root / "eff-shard1.jsonl"))
    cluster.stop("teacher")
    t, b = max(teacher_runs), max(bare_t)
    return {
        "distillq_tokens_per_s": round(t, 1),
        "bare_tokens_per_s": round(b, 1),
        "ratio": round(t / b, 3),
        "all_ratios": [round(x / y, 3) for x, y in zip(teacher_runs, bare_t, strict=True)],
    }


def measure_student(root: Path, cluster: Cluster, job: Any, repeats: int) -> dict[str, Any]:
    """Replica task on shard 1 (its cache written by :func:`measure_teacher`) vs bare CE."""
    r = broker.client(cluster.settings.broker_url, cluster.settings.sentinel_master)
    cluster.worker("student", "student")
    _timed(app.signature("distillq.train_replica", args=(job.id, "s", 0, 0)))  # warm-up
    student_runs, inner, bare_s = [], [], []
    for _ in range(repeats):
        live.reset_attempts(r, job.id)
        # The same replica again, as a job runs it (from the version that merged shard 0, with
        # its optimizer state): without this it finds its delta, or the merge of shard 1 that
        # the teacher's landing launched, on storage and returns at once.
        checkpoints.drop_round(job.paths, "s", 1)
        for v in checkpoints.versions(job.paths, "s"):
            d = job.paths.global_version("s", v)
            if 1 in json.loads((d / "meta.json").read_text())["merged_shards"]:
                shutil.rmtree(d)
        res, wall = _timed(app.signature("distillq.train_replica", args=(job.id, "s", 1, 0)))
        assert "skipped" not in res, res
        student_runs.append(res["tokens"] / wall)
        inner.append(res["tokens_per_s"])
        bare_s.append(bare_student(root, job.paths.shard(1)))
    cluster.stop("student")
    st, bs = max(student_runs), max(bare_s)
    return {
        "distillq_tokens_per_s": round(st, 1),
        "in_task_loop_tokens_per_s": max(inner),
        "bare_tokens_per_s": round(bs, 1),
        "ratio": round(st / bs, 3),
        "all_ratios": [round(x / y, 3) for x, y in zip(student_runs, bare_s, strict=True)],
    }


def main() -> None:
    """``python -m bench.efficiency [--teacher-only]``: this part of ``make bench`` alone."""
    import argparse
    import tempfile

    from bench.cluster import cluster

    p = argparse.ArgumentParser(prog="python -m bench.efficiency")
    p.add_argument("--teacher-only", action="store_true", help="skip the student side")
    p.add_argument("--records", type=int, default=480)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="distillq-bench-") as tmp,
        cluster(Path(tmp) / "cluster") as c,
    ):
        root = Path(tmp)
        job = _job(root, c, args.records)
        out = {"teacher": measure_teacher(root, c, job, args.repeats)}
        if not args.teacher_only:
            out["student"] = measure_student(root, c, job, args.repeats)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
