"""Offline (distillq: teacher once, students read the cache) vs online KD (teacher forward at
every student step, as TRL's GKDTrainer and DistillKit's online mode do). One thread, same
models, same batches, same schedule. (Quality by kind of target: ``bench/quality.py``.)"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import batches, dataset, models, samples, sgd_step, write_targets
from bench.efficiency import BATCH, build_student
from distillq.core.job.models import load_causal_lm, load_tokenizer
from distillq.core.maths.losses import kd_loss
from distillq.core.student.evaluate import eval_loss
from distillq.core.student.train import lr_at, target_logits
from distillq.core.targets.shard import Shard
from distillq.core.targets.topk import TopK
from distillq.core.teacher.local import score_batch

ALPHA, K = 0.1, 64
Targets = Callable[[int, list[Any]], tuple[torch.Tensor | None, torch.Tensor | None]]


def split(root: Path, records: int) -> tuple[Any, list[Any], list[Any]]:
    m = models(root)
    teacher, tok = load_causal_lm(m["teacher"]), load_tokenizer(m["teacher"])
    ss = samples(dataset(root, records), tok)
    return (
        teacher,
        [s for i, s in enumerate(ss) if i % 10 != 9],
        [s for i, s in enumerate(ss) if i % 10 == 9],
    )


def train(
    train_set: list[Any],
    eval_set: list[Any],
    epochs: int,
    targets: Targets,
    eval_at: tuple[int, ...],
) -> dict[int, dict[str, float]]:
    """KD training; ``targets(batch_index, samples)`` gives the sparse teacher targets."""
    student = build_student(Path("/"))
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-3)
    total = epochs * math.ceil(len(train_set) / BATCH)
    from distillq.core.job.spec import StudentSpec

    sched = StudentSpec(name="s", model="m", lr=3e-3, warmup_steps=10)
    out, step, t, excluded = {}, 0, time.perf_counter(), 0.0
    for epoch in range(1, epochs + 1):
        for b, (ids, mask, rows, cols, labels) in enumerate(batches(train_set, BATCH)):
            t_ids, t_lp = targets(b, train_set[b * BATCH : (b + 1) * BATCH])
            logits = target_logits(student, ids, mask, rows, cols)
            loss, _ = kd_loss(logits, labels, t_ids, t_lp, alpha=ALPHA, temperature=1.0)
            loss.backward()
            sgd_step(params, opt, lr_at(step, sched, total))
            step += 1
        if epoch in eval_at:
            e0 = time.perf_counter()
            loss_e = eval_loss(student, eval_set).loss
            excluded += time.perf_counter() - e0
            out[epoch] = {"train_s": time.perf_counter() - t - excluded, "heldout": loss_e}
    return out


def offline_vs_online(
    root: Path, records: int = 320, epochs: tuple[int, ...] = (1, 2, 4)
) -> dict[str, Any]:
    torch.set_num_threads(1)
    teacher, train_set, eval_set = split(root, records)
    E = max(epochs)
    # Offline: score once into a real cache file, then read targets from it every epoch.
    t = time.perf_counter()
    path = root / "offline.h5"
    scored: list[tuple[Any, Any]] = []
    for i in range(0, len(train_set), BATCH):
        chunk = train_set[i : i + BATCH]
        scored += zip(chunk, score_batch(teacher, chunk, TopK(K), 1.0), strict=True)
    write_targets(path, scored, 4096, K)
    cache_s = time.perf_counter() - t
    reader = Shard(path)

    def from_cache(b: int, _: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = reader.batch(b * BATCH, min((b + 1) * BATCH, len(reader)))
        return torch.from_numpy(batch.target_ids), torch.from_numpy(batch.target_logprobs)

    def online(_: int, chunk: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        tg = score_batch(teacher, chunk, TopK(K), 1.0)
        return (
            torch.from_numpy(np.concatenate([x.ids for x in tg])),
            torch.from_numpy(np.concatenate([x.logprobs for x in tg]).astype(np.float32)),
        )

    off = train(train_set, eval_set, E, from_cache, epochs)
    reader.close()
    on = train(train_set, eval_set, E, online, epochs)
    rows = {}
    for e in epochs:
        off_s = cache_s + off[e]["train_s"]
        rows[e] = {
            "distillq_s": round(off_s, 1),
            "online_s": round(on[e]["train_s"], 1),
            "speedup": round(on[e]["train_s"] / off_s, 2),
            "distillq_heldout": round(off[e]["heldout"], 4),
            "online_heldout": round(on[e]["heldout"], 4),
        }
    return {
        "cache_build_s": round(cache_s, 1),
        "epochs": rows,
        "train_tokens": sum(len(s.input_ids) for s in train_set),
    }
