"""Distillation quality by kind of teacher target, measured the way Sparse Logit Sampling
(Anshumann et al., ACL 2025) does: one student, one seed schedule and equal steps per arm;
held-out CE and expected calibration error (ECE, 15 bins) per arm, bytes per position of the
real cache file each sparse arm trains from, and each arm's share of dense KD's gain over CE.

Arms: CE only, dense KD (every token), top-k at k ∈ {8, 16, 32, 64} and sampled at
N ∈ {4, 8, 12, 16, 32}. Sparse targets are made by the product's own teacher function
(``core.teacher.score_batch``), written with its cache writer and read back by its reader;
the loss is the product's (``core.losses.kd_terms``). Each arm runs with 3 seeds (the
student's initialisation, the batch order and the draws); a difference smaller than the
seeds' spread is no difference.

    python -m bench.run --only quality
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import batches, dataset, models, samples, sgd_step, write_targets
from distillq.app import demo_models
from distillq.core.job.models import load_causal_lm, load_tokenizer
from distillq.core.job.spec import PeftSpec, StudentSpec
from distillq.core.student.train import build, lr_at, target_logits
from distillq.core.targets.records import SparseTargets
from distillq.core.targets.sampled import Sampled
from distillq.core.targets.shard import Shard
from distillq.core.targets.topk import TopK
from distillq.core.teacher.local import score_batch

ALPHA, LR, BATCH, EPOCHS = 0.1, 3e-3, 16, 3
TOPK = (8, 16, 32, 64)
SAMPLED = (4, 8, 12, 16, 32)
SEEDS = (0, 1, 2)
ECE_BINS = 15


def ece(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error: Σ_b (n_b / n) · |accuracy_b − confidence_b| over equal-width
    confidence bins of the top-1 prediction."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        in_b = which == b
        if in_b.any():
            total += in_b.mean() * abs(correct[in_b].mean() - confidence[in_b].mean())
    return float(total)


@torch.no_grad()
def heldout(student: Any, eval_set: list[Any]) -> tuple[float, float, float]:
    """Held-out CE (nats/token), ECE and overconfidence (mean top-1 confidence − accuracy:
    the sign ECE leaves out) of the student's next-token predictions."""
    student.eval()
    nll, conf, hit = [], [], []
    for ids, mask, rows, cols, labels in batches(eval_set, BATCH):
        logp = torch.log_softmax(target_logits(student, ids, mask, rows, cols).float(), -1)
        nll.append(-logp.gather(-1, labels[:, None]).squeeze(-1))
        top = logp.max(-1)
        conf.append(top.values.exp())
        hit.append(top.indices == labels)
    student.train()
    confidence, correct = torch.cat(conf).numpy(), torch.cat(hit).float().numpy()
    return (
        float(torch.cat(nll).mean()),
        ece(confidence, correct),
        float(confidence.mean() - correct.mean()),
    )


def student_model(root: Path, seed: int) -> Any:
    """The demo student, initialised from ``seed``: full fine-tuning, as in the demo."""
    path = root / "models" / f"quality-student-{seed}"
    if not (path / "config.json").exists():
        demo_models.build_student(path, seed=1234 + seed)
    return build(StudentSpec(name="s", model=str(path), peft=PeftSpec(method="full")))


def train(
    root: Path,
    seed: int,
    train_set: list[Any],
    eval_set: list[Any],
    targets: Any,
) -> tuple[float, float, float]:
    """One arm: ``targets(b)`` gives batch b's (ids, logprobs, weights) or Nones (CE only)."""
    from distillq.core.maths.losses import bucketed, estimated, kd_terms

    torch.manual_seed(seed)
    student = student_model(root, seed)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR)
    n_batches = math.ceil(len(train_set) / BATCH)
    sched = StudentSpec(name="s", model="m", lr=LR, warmup_steps=10)
    total, step = EPOCHS * n_batches, 0
    all_batches = list(batches(train_set, BATCH))
    for epoch in range(EPOCHS):
        order = np.random.default_rng([seed, epoch]).permutation(n_batches)
        for b in order:
            ids, mask, rows, cols, labels = all_batches[b]
            t_ids, t_lp, w = targets(int(b))
            logits = target_logits(student, ids, mask, rows, cols)
            loss, _, _ = kd_terms(
                logits,
                labels,
                t_ids,
                t_lp,
                alpha=1.0 if t_ids is None else ALPHA,
                temperature=1.0,
                weights=w,
                estimator=estimated if w is not None else bucketed,
            )
            loss.backward()
            sgd_step(params, opt, lr_at(step, sched, total))
            step += 1
    return heldout(student, eval_set)


def cache_arm(
    path: Path, teacher: Any, train_set: list[Any], vocab: int, k: int, draw: Sampled | None
) -> tuple[Shard, float]:
    """The arm's targets for the training set, as the teacher stage makes and stores them;
    the open reader and the file's bytes per target position."""
    scored: list[tuple[Any, SparseTargets]] = []
    for i in range(0, len(train_set), BATCH):
        chunk = train_set[i : i + BATCH]
        scored += zip(chunk, score_batch(teacher, chunk, draw or TopK(k), 1.0), strict=True)
    positions = write_targets(path, scored, vocab, k, draw)
    return Shard(path), path.stat().st_size / positions


def from_reader(r: Shard, n: int) -> Any:
    def targets(b: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        batch = r.batch(b * BATCH, min((b + 1) * BATCH, n))
        assert batch.target_ids is not None and batch.target_logprobs is not None
        w = None if batch.target_weights is None else torch.from_numpy(batch.target_weights)
        return torch.from_numpy(batch.target_ids), torch.from_numpy(batch.target_logprobs), w

    return targets


def measure(root: Path, records: int = 480, seeds: tuple[int, ...] = SEEDS) -> dict[str, Any]:
    torch.set_num_threads(1)
    t0 = time.time()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    m = models(root)
    teacher, tok = load_causal_lm(m["teacher"]), load_tokenizer(m["teacher"])
    ss = samples(dataset(root, records), tok)
    train_set = [s for i, s in enumerate(ss) if i % 10 != 9]
    eval_set = [s for i, s in enumerate(ss) if i % 10 == 9]
    vocab = teacher.get_output_embeddings().weight.shape[0]
    dense: list[tuple[torch.Tensor, torch.Tensor]] = []
    with torch.no_grad():
        for ids, mask, rows, cols, _ in batches(train_set, BATCH):
            logits = teacher(input_ids=ids, attention_mask=mask).logits[rows, cols].float()
            lp = torch.log_softmax(logits, -1)
            dense.append((torch.arange(vocab).expand(len(lp), -1), lp))
    with torch.no_grad():
        teacher_ce = float(
            np.mean(
                [
                    float(
                        -torch.log_softmax(
                            teacher(input_ids=i, attention_mask=a).logits[r, c].float(), -1
                        )
                        .gather(-1, lab[:, None])
                        .mean()
                    )
                    for i, a, r, c, lab in batches(eval_set, BATCH)
                ]
            )
        )
    n = len(train_set)
    arms: dict[str, dict[str, Any]] = {}

    def run(name: str, targets_for_seed: Any, bytes_pp: float | None = None) -> None:
        got = [train(root, s, train_set, eval_set, targets_for_seed(s)) for s in seeds]
        arms[name] = {
            "heldout": [round(x[0], 4) for x in got],
            "ece": [round(x[1], 4) for x in got],
            "overconfidence": [round(x[2], 4) for x in got],
            "bytes_per_position": None if bytes_pp is None else round(bytes_pp, 1),
        }
        print(f"  quality {name}: {arms[name]} ({time.time() - t0:.0f}s)", flush=True)

    run("ce_only", lambda s: lambda b: (None, None, None))
    run("dense", lambda s: lambda b: (*dense[b], None))
    top: list[tuple[Any, SparseTargets]] = []
    for i in range(0, n, BATCH):
        chunk = train_set[i : i + BATCH]
        top += zip(chunk, score_batch(teacher, chunk, TopK(max(TOPK)), 1.0), strict=True)
    for k in TOPK:
        path = root / f"q-top{k}.h5"
        cut = [(smp, SparseTargets(t.ids[:, :k], t.logprobs[:, :k])) for smp, t in top]
        positions = write_targets(path, cut, vocab, k)
        reader = Shard(path)
        run(f"top{k}", lambda s, r=reader: from_reader(r, n), path.stat().st_size / positions)
    for draws in SAMPLED:
        readers: dict[int, tuple[Shard, float]] = {
            s: cache_arm(
                root / f"q-s{draws}-{s}.h5",
                teacher,
                train_set,
                vocab,
                draws,
                Sampled(draws, s, 1.0, 1.0),
            )
            for s in seeds
        }
        mean_bytes = float(np.mean([b for _, b in readers.values()]))
        run(f"sampled{draws}", lambda s, rs=readers: from_reader(rs[s][0], n), mean_bytes)
    return {**summarise(arms, teacher_ce, len(seeds), time.time() - t0), "started": started}


def summarise(
    arms: dict[str, dict[str, Any]], teacher_ce: float, seeds: int, seconds: float
) -> dict[str, Any]:
    """Each arm's mean and range over seeds, and its share of dense KD's gain over CE.

    Arms are compared seed by seed: a seed fixes the student's initialisation and batch order
    for every arm, and the spread between seeds (0.2 nats for CE alone) is far larger than
    the differences between targets. So the share is taken per seed,
    (CE_s − arm_s) / (CE_s − dense_s), and reported as mean [min, max]."""
    ce = np.asarray(arms["ce_only"]["heldout"])
    dense = np.asarray(arms["dense"]["heldout"])
    for a in arms.values():
        h, e = np.asarray(a["heldout"]), np.asarray(a["ece"])
        share = (ce - h) / (ce - dense)
        a["heldout_mean"] = round(float(h.mean()), 4)
        a["ece_mean"] = round(float(e.mean()), 4)
        a["share_of_dense_gain"] = [round(float(x), 3) for x in share]
        a["share_mean"] = round(float(share.mean()), 3)
    return {
        "arms": arms,
        "teacher_heldout": round(teacher_ce, 4),
        "seeds": seeds,
        "alpha": ALPHA,
        "epochs": EPOCHS,
        "batch": BATCH,
        "seconds": round(seconds),
    }
