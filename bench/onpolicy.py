"""On-policy distillation, measured through the queues: does a student that learns on its own
samples, scored by the teacher, write text the teacher likes better than one that learned on
the cache, and at what cost to held-out CE on the data?

The demo teacher (stdlib-trained, shipped) and the demo student. The cache warms the student
up and on-policy finishes it (the recipe GKD and the on-policy distillation reports use): a
first job distills the demo student off-policy (forward KL on the cache, 2 epochs); a second
job continues that warm student on the same data in three arms × 3 seeds, the same rounds,
epochs and batch size:

- ``off``: off-policy KD on the cache (the job's loss, forward KL, α = 0.1);
- ``on``: on-policy, ``fraction: 1.0`` (reverse KL on its own samples);
- ``mixed``: ``fraction: 0.5`` (reverse KL on both kinds of batch, α = 0.1 on cache ones).

Equal teacher compute, counted as positions the teacher scored per round: a record's cache
row has its whole text as targets (~90 positions); an on-policy sample has its prompt (the
record's first 48 tokens or half) and ``max_new_tokens`` = 48 drawn tokens, so each arm's
rounds train on about as many teacher-scored positions (measured: ``teacher_positions``).

Two measures per arm: held-out CE on the data (the report's) and the teacher's mean log-prob
per token of the student's own greedy continuations (48 tokens) of every held-out prompt,
the teacher run densely here. Goal: on-policy or mixed beats off-policy on the second at
every seed, at no more than 5% worse on the first.

Then the phases of one on-policy round against bare loops (a bare ``generate`` per prompt, a
bare teacher forward + top-k over the same samples, bare training steps over the same
batches), and a round's wall against the sum of its phases.

    python -m bench.run --only onpolicy
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.cluster import run_job
from distillq.app import demo_models
from distillq.core.job.data import Prompt
from distillq.core.job.jobs import Job
from distillq.core.job.models import load_causal_lm, load_tokenizer
from distillq.core.job.spec import OnPolicySpec
from distillq.core.report import report
from distillq.core.student import evaluate, sample
from distillq.core.student import train as student
from distillq.core.targets.shard import Shard
from distillq.storage import cache, checkpoints
from distillq.storage.layout import sidecar

WARM_RECORDS, RECORDS = 1600, 480
"""The warm-up job's records, then the arms' (disjoint: the arms' held-out records were never
the warm student's training data)."""
SEEDS = (0, 1, 2)
ARMS: dict[str, float | None] = {"off": None, "on": 1.0, "mixed": 0.5}
NEW_TOKENS = 48
GOAL_CE = 0.05
CHUNKS = 4
BASE = {"peft": {"method": "full"}, "lr": 1e-3, "epochs": 2, "batch_size": 16, "warmup_steps": 5}


def _write_jsonl(path: Path, records: list[dict[str, str]]) -> Path:
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _spec(name: str, data: Path, teacher: Path, students: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": name,
        "dataset": str(data),
        "shards": 4,
        "eval_fraction": 0.1,
        "teacher": {"model": str(teacher), "top_k": 16, "batch_size": 16, "max_length": 128},
        "students": students,
        "loss": {"kind": "forward_kl", "alpha": 0.1},
    }


def _warm(root: Path, data: Path, teacher: Path) -> str:
    """The off-policy-distilled student every arm starts from (its merged model): the demo's
    recipe (full fine-tuning from random init, lr 3e-3, 3 epochs) on records of its own."""
    cold = demo_models.build_student(root / "cold-student", tokenizer_dir=teacher)
    track = {**BASE, "name": "warm", "model": str(cold), "lr": 3e-3, "epochs": 3}
    job, _ = run_job(root / "warm", _spec("bench-onpolicy-warm", data, teacher, [track]))
    data_, _ = report.collect(job)
    out = data_.students["warm"].outputs
    assert out is not None and out.merged
    return out.merged


SAMPLED = 4
"""Sampled continuations (T = 1) per held-out prompt for the second view of the measure: greedy
text of a small model falls into loops the teacher may like, and one loop moves the mean."""


@torch.no_grad()
def teacher_logprob(
    model: Any, teacher: Any, tok: Any, prompts: list[Prompt], sampled: bool = False
) -> float:
    """The teacher's mean log-prob per token of ``model``'s greedy continuations (``sampled``:
    ``SAMPLED`` continuations at T = 1 per prompt, seeded per prompt, the same for every arm)."""
    how = (
        OnPolicySpec(temperature=1.0, samples_per_prompt=SAMPLED, max_new_tokens=NEW_TOKENS)
        if sampled
        else OnPolicySpec(temperature=0.0, max_new_tokens=NEW_TOKENS)
    )
    total, count = 0.0, 0
    for s, _ in sample.continuations(model, tok, prompts, how, 0, 10_000):
        pos = torch.as_tensor(s.target_positions())
        ids = torch.as_tensor([s.input_ids])
        logp = torch.log_softmax(teacher(ids).logits[0].float(), -1)
        total += float(logp[pos, ids[0, pos + 1]].sum())
        count += len(pos)
    return total / max(count, 1)


def _merged(job: Job, name: str) -> Any:
    data_, _ = report.collect(job)
    out = data_.students[name].outputs
    assert out is not None and out.merged
    return load_causal_lm(out.merged, "bench student", torch.float32).eval()


def _phases(job: Job, track: str) -> dict[str, Any]:
    """Seconds of round 0's phases, summed over its parts, and the round's wall (first sample
    started to merge) against their sum: below 1 where parts overlapped."""
    ckpt = checkpoints.latest(job.paths, track)
    assert ckpt is not None
    spec = job.spec.student(track)
    rnd = next(r for r in ckpt.meta.rounds if r.shard == 0)
    samples = [
        cache.read_stats(sidecar(job.paths.onpolicy_samples(track, 0, p)))
        for p in range(spec.parts)
    ]
    scored = [
        cache.read_stats(sidecar(job.paths.onpolicy_scored(track, 0, p))) for p in range(spec.parts)
    ]
    sample_s = sum(x.seconds for x in samples)
    score_s = sum(x.seconds for x in scored)
    train_s = sum(rep.seconds for rep in rnd.replicas)
    wall = rnd.merged_at - min(x.started_at for x in samples)
    return {
        "parts": spec.parts,
        "sample_s": round(sample_s, 3),
        "score_s": round(score_s, 3),
        "train_s": round(train_s, 3),
        "round_wall_s": round(wall, 2),
        "round_wall_vs_phase_sum": round(wall / (sample_s + score_s + train_s), 3),
        "samples": sum(x.samples for x in samples),
        "sampled_tokens": sum(x.tokens for x in samples),
        "train_steps": sum(rep.steps for rep in rnd.replicas),
    }


def _bare(job: Job, track: str, teacher: Any, warm: str) -> dict[str, float]:
    """The same work as round 0's phases, as bare loops in this process."""
    spec = job.spec.student(track)
    assert spec.on_policy is not None
    from distillq.core import onpolicy

    tok = load_tokenizer(warm)
    model = load_causal_lm(warm, "bench student", torch.float32).eval()
    todo = onpolicy.prompts(job, track, 0, 0)
    t0 = time.perf_counter()
    for p in todo:  # what the sample phase asks of generate, with nothing around it
        ids = torch.as_tensor([p.input_ids])
        model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=spec.on_policy.max_new_tokens,
            do_sample=True,
            temperature=spec.on_policy.temperature,
            top_p=spec.on_policy.top_p,
            top_k=None,
            pad_token_id=tok.eos_token_id,
            eos_token_id=tok.eos_token_id,
        )
    gen_s = time.perf_counter() - t0
    scored = job.paths.onpolicy_scored(track, 0, 0)
    with Shard(scored) as r:
        batches = [r.batch_of(np.arange(a, min(a + 16, len(r)))) for a in range(0, len(r), 16)]
    t0 = time.perf_counter()
    with torch.no_grad():
        for b in batches:
            out = teacher(
                input_ids=torch.as_tensor(b.padded.input_ids),
                attention_mask=torch.as_tensor(b.padded.attention_mask),
            ).logits
            at = out[torch.as_tensor(b.padded.rows), torch.as_tensor(b.padded.cols)]
            torch.log_softmax(at.float(), -1).topk(16, -1)
    score_s = time.perf_counter() - t0
    train_model = load_causal_lm(warm, "bench student", torch.float32).train()
    opt = torch.optim.AdamW(train_model.parameters(), lr=1e-3)
    t0 = time.perf_counter()
    for _ in range(spec.epochs):
        for b in batches:
            logits = student.target_logits(
                train_model,
                torch.as_tensor(b.padded.input_ids),
                torch.as_tensor(b.padded.attention_mask),
                torch.as_tensor(b.padded.rows),
                torch.as_tensor(b.padded.cols),
            )
            torch.nn.functional.cross_entropy(logits, torch.as_tensor(b.padded.labels)).backward()
            opt.step()
            opt.zero_grad()
    return {
        "generate_s": gen_s,
        "teacher_forward_s": score_s,
        "train_steps_s": time.perf_counter() - t0,
    }


def _teacher_tokens(job: Job, name: str) -> int:
    """Tokens the teacher ran over for an arm: the cache's (one pass, shared by every arm), or
    the scored samples' where the arm's rounds are on-policy."""
    spec = job.spec.student(name)
    if spec.on_policy is None:
        return sum(cache.read_stats(job.paths.shard_stats(i)).tokens for i in range(job.n_shards))
    return sum(
        cache.read_stats(sidecar(job.paths.onpolicy_scored(name, r, p))).tokens
        for r in range(job.rounds(name))
        for p in range(spec.replicas)
    )


def measure(root: Path) -> dict[str, Any]:
    teacher_dir = demo_models.TEACHER_ASSET
    records = demo_models.demo_split_records(WARM_RECORDS + RECORDS)
    warm_data = _write_jsonl(root / "stdlib-warm.jsonl", records[:WARM_RECORDS])
    data = _write_jsonl(root / "stdlib.jsonl", records[WARM_RECORDS:])
    warm = _warm(root, warm_data, teacher_dir)
    students = []
    for seed in SEEDS:
        for arm, fraction in ARMS.items():
            extra: dict[str, Any] = {}
            if fraction is not None:
                extra["on_policy"] = {
                    "fraction": fraction,
                    "max_new_tokens": NEW_TOKENS,
                    "seed": seed,
                }
            students.append(
                {**BASE, "name": f"{arm}-s{seed}", "model": warm, "seed": seed, **extra}
            )
    job, seconds = run_job(root / "arms", _spec("bench-onpolicy", data, teacher_dir, students))
    data_, _ = report.collect(job)
    teacher = load_causal_lm(str(teacher_dir), "bench teacher", torch.float32).eval()
    tok = load_tokenizer(str(teacher_dir))
    held = evaluate.eval_samples(job, tok)
    prompts = [
        Prompt(s.record_id, ids)
        for s, (ids, _) in zip(held, evaluate.prompts(held, len(held)), strict=True)
    ]
    warm_model = load_causal_lm(warm, "bench student", torch.float32).eval()

    def measures(model: Any, ce: float) -> dict[str, float]:
        return {
            "heldout_ce": round(ce, 4),
            "teacher_logprob": round(teacher_logprob(model, teacher, tok, prompts), 4),
            "teacher_logprob_sampled": round(
                teacher_logprob(model, teacher, tok, prompts, sampled=True), 4
            ),
        }

    arms = {"warm": measures(warm_model, evaluate.eval_loss(warm_model, held).loss)}
    for name, st in data_.students.items():
        arms[name] = measures(_merged(job, name), st.eval_loss or float("nan"))
    verdict = {}
    for seed in SEEDS:
        off = arms[f"off-s{seed}"]
        best = max(("on", "mixed"), key=lambda a: arms[f"{a}-s{seed}"]["teacher_logprob"])
        b = arms[f"{best}-s{seed}"]
        verdict[seed] = {
            "best": best,
            "teacher_logprob_gain": round(b["teacher_logprob"] - off["teacher_logprob"], 4),
            "ce_change": round(b["heldout_ce"] / off["heldout_ce"] - 1, 4),
            "met": b["teacher_logprob"] > off["teacher_logprob"]
            and b["heldout_ce"] <= off["heldout_ce"] * (1 + GOAL_CE),
        }
    # The phases, timed on a job of one on-policy track alone (in the arms' job, nine tracks
    # share two workers, and a round's wall is mostly its turn in the queue).
    op = {"fraction": 1.0, "max_new_tokens": NEW_TOKENS}
    alone = {**BASE, "name": "alone", "model": warm, "on_policy": op}
    solo, _ = run_job(root / "solo", _spec("bench-onpolicy-phases", data, teacher_dir, [alone]))
    phases = _phases(solo, "alone")
    bare = _bare(solo, "alone", teacher, warm)
    # The same round in CHUNKS pieces: the teacher worker scores one while the other worker
    # samples the next, so the round's wall falls below the sum of its phases.
    chunked = {**alone, "on_policy": {**op, "chunks": CHUNKS}}
    piped, _ = run_job(
        root / "chunks", _spec("bench-onpolicy-chunks", data, teacher_dir, [chunked])
    )
    phases_chunked = _phases(piped, "alone")
    return {
        "warm_records": WARM_RECORDS,
        "records": RECORDS,
        "eval_samples": len(held),
        "new_tokens": NEW_TOKENS,
        "teacher_heldout": data_.teacher.eval_loss if data_.teacher else None,
        "arms": arms,
        "teacher_tokens": {name: _teacher_tokens(job, name) for name in data_.students},
        "verdict": verdict,
        "met": all(v["met"] for v in verdict.values()),
        "phases": phases,
        "phases_chunked": phases_chunked,
        "bare": {k: round(v, 2) for k, v in bare.items()},
        "phase_vs_bare": {
            "sample": round(phases["sample_s"] / bare["generate_s"], 2),
            "score": round(phases["score_s"] / bare["teacher_forward_s"], 2),
            "train": round(phases["train_s"] / bare["train_steps_s"], 2),
        },
        "job_seconds": round(seconds),
    }
