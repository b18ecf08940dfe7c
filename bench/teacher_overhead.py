"""The teacher task's own overhead on a small teacher, where distillq's per-token work shows.

    python -m bench.run --only teacher_overhead

A 4-layer d = 256 Llama at the demo tokenizer's V = 4,096, k = 64, batch 16, ~100k tokens of
demo text; two torch threads on every side. Three bare loops run ``model(**batch)`` (logits
of every position, nothing kept) over the same samples:

- ``bare_consecutive``: batches of consecutive samples (what a hand-written loop does);
- ``bare_grouped``: the very batches the teacher task runs (grouped by length);
- the padding-free token count is what every tokens/s here divides by.

The distillq side is a ``teacher_shard`` task through a real worker (2 threads, its model
already loaded), timed from sending to its result; and a whole job from ``distillq enqueue``
(a fresh process) to the last shard's sidecar on storage, 4 shards, the worker warm. Each
side is the best of ``repeats``, the sides interleaved.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from bench.cluster import Cluster, cluster
from bench.common import dataset, samples
from distillq.app import demo_models
from distillq.core.job.data import Sample, padded
from distillq.core.job.jobs import load_job
from distillq.core.job.models import load_causal_lm, load_tokenizer, on_device
from distillq.core.maths.batching import batch_groups
from distillq.core.runtime import broker, live
from distillq.core.teacher.local import LocalTeacher
from distillq.tasks.celery_app import app

BATCH, RECORDS, K = 16, 800, 64


def teacher_model(root: Path) -> str:
    out = root / "models" / "teacher-4x256"
    if (out / "config.json").exists():
        return str(out)
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(demo_models.TEACHER_ASSET)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=256, intermediate_size=688, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.eos_token_id,
    )  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@torch.no_grad()
def bare(model: Any, ss: list[Sample], grouped: bool) -> float:
    """Padding-free tokens/s of ``model(**batch)`` over ``ss``."""
    window = BATCH * (LocalTeacher.GROUP_WINDOW if grouped else 1)
    t = time.perf_counter()
    for w in range(0, len(ss), window):
        part = ss[w : w + window]
        for g in batch_groups([len(s.input_ids) for s in part], BATCH, grouped):
            ids, mask, *_ = on_device(padded([part[i] for i in g]), "cpu")
            model(input_ids=ids, attention_mask=mask)
    return sum(len(s.input_ids) for s in ss) / (time.perf_counter() - t)


def spec(root: Path, name: str, shards: int) -> dict[str, Any]:
    model = teacher_model(root)
    return {
        "name": name,
        "dataset": str(dataset(root, RECORDS)),
        "shards": shards,
        "eval_fraction": 0.0,
        # float32 as the bare loop: the ratio measures the task around equal compute
        "teacher": {
            "model": model,
            "top_k": K,
            "batch_size": BATCH,
            "max_length": 256,
            "dtype": "float32",
        },
        "students": [{"name": "s", "model": model}],
    }


def _task(c: Cluster, job: Any) -> float:
    """tokens/s of shard 0's task, rewritten, from sending it to its result."""
    live.reset_attempts(broker.client(c.settings.broker_url, c.settings.sentinel_master), job.id)
    job.paths.shard(0).unlink(missing_ok=True)
    job.paths.shard_stats(0).unlink(missing_ok=True)
    t = time.perf_counter()
    res = app.signature("distillq.teacher_shard", args=(job.id, 0)).apply_async().get(timeout=900)
    return float(res["tokens"]) / (time.perf_counter() - t)


def _enqueue_to_cache(c: Cluster, root: Path, i: int) -> tuple[float, int]:
    """(tokens/s, tokens) of a fresh 4-shard job from `distillq enqueue` to its last shard."""
    path = root / f"overhead-{i}.yaml"
    path.write_text(yaml.safe_dump(spec(root, f"overhead{i}", shards=4)))
    env = {
        **os.environ,
        "DISTILLQ_BROKER_URL": c.settings.broker_url,
        "DISTILLQ_STORAGE": str(c.settings.storage),
    }
    cli = [sys.executable, "-m", "distillq"]
    t = time.perf_counter()
    out = subprocess.run(
        [*cli, "enqueue", str(path)], env=env, capture_output=True, text=True, check=True
    )
    job_id = out.stdout.strip().splitlines()[-1].split()[-1]
    job = load_job(c.settings.storage, job_id)
    stats = [job.paths.shard_stats(s) for s in range(job.n_shards)]
    while not all(p.exists() for p in stats):
        time.sleep(0.05)
    wall = time.perf_counter() - t
    tokens = sum(json.loads(p.read_text())["tokens"] for p in stats)
    return tokens / wall, tokens


def _student_padding(shard: Path) -> dict[str, list[float | None]]:
    """A replica's padding over this shard at a few batch sizes: [grouped, consecutive]."""
    from distillq.core.maths.batching import PaddingCount
    from distillq.core.targets.shard import Shard

    out: dict[str, list[float | None]] = {}
    with Shard(shard) as r:
        lengths = r.lengths(range(len(r)))
    for b in (4, 8, 16, 32):
        count = PaddingCount()
        count.add(lengths, batch_groups(lengths, b, by_length=True), b)
        out[str(b)] = list(count.fractions())
    return out


def measure(root: Path, repeats: int = 3) -> dict[str, Any]:
    torch.set_num_threads(2)
    model_path = teacher_model(root)
    model, tok = load_causal_lm(model_path), load_tokenizer(model_path)
    ss = samples(dataset(root, RECORDS), tok, 256)
    runs: dict[str, list[float]] = {"consecutive": [], "grouped": [], "task": [], "job": []}
    with cluster(root / "cluster") as c:
        c.worker("teacher", "teacher", threads=2)
        job = c.job(spec(root, "overhead", shards=1))
        _task(c, job)  # warm-up: the worker loads the model once
        bare(model, ss[:64], grouped=True)
        tokens = 0
        for i in range(repeats):
            runs["consecutive"].append(bare(model, ss, grouped=False))
            runs["grouped"].append(bare(model, ss, grouped=True))
            runs["task"].append(_task(c, job))
            rate, tokens = _enqueue_to_cache(c, root, i)
            runs["job"].append(rate)
        shard = json.loads(job.paths.shard_stats(0).read_text())
        students = _student_padding(job.paths.shard(0))
    best = {k: max(v) for k, v in runs.items()}
    return {
        "tokens": tokens,
        "repeats": repeats,
        "tokens_per_s": {k: round(v, 1) for k, v in best.items()},
        "task_vs_bare_grouped": round(best["task"] / best["grouped"], 3),
        "task_vs_bare_consecutive": round(best["task"] / best["consecutive"], 3),
        "job_vs_bare_grouped": round(best["job"] / best["grouped"], 3),
        "job_vs_bare_consecutive": round(best["job"] / best["consecutive"], 3),
        "padding": {"grouped": shard["padding"], "consecutive": shard["padding_ungrouped"]},
        "student_padding": students,
        "all": {k: [round(x, 1) for x in v] for k, v in runs.items()},
    }
