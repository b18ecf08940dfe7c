"""``report.json`` + ``report.png`` for a finished job, assembled from storage alone."""

from __future__ import annotations

import json
import math
from typing import Any

from app.job_store import Job
from storage import checkpoints
from storage.atomic import atomic_path, read_json, write_json


def _shard_stats(job: Job) -> list[dict[str, Any]]:
    return [
        read_json(job.paths.shard_stats(i))
        for i in range(job.n_shards)
        if job.paths.shard_stats(i).exists()
    ]


def collect(job: Job) -> dict[str, Any]:
    shards = _shard_stats(job)
    positions = sum(s["target_positions"] for s in shards)
    cache_bytes = sum(s["bytes"] for s in shards)
    t_tokens = sum(s["tokens"] for s in shards)
    t_seconds = sum(s["seconds"] for s in shards)
    out: dict[str, Any] = {
        "job_id": job.id,
        "mode": job.spec.mode,
        "records": job.split.n_records,
        "eval_records": len(job.split.eval_ids()),
        "shards": job.n_shards,
        "teacher": None,
        "cache": {
            "bytes": cache_bytes,
            "target_positions": positions,
            "bytes_per_position": round(cache_bytes / positions, 1)
            if positions and job.spec.has_teacher
            else None,
            "k": job.spec.teacher.top_k if job.spec.teacher else 0,
        },
        "students": {},
    }
    if job.spec.teacher:
        ev = read_json(job.paths.teacher_eval) if job.paths.teacher_eval.exists() else {}
        out["teacher"] = {
            "model": job.spec.teacher.model,
            "eval_loss": ev.get("loss"),
            "tokens": t_tokens,
            "tokens_per_s": round(t_tokens / t_seconds, 1) if t_seconds else None,
        }
    starts = [s["started_at"] for s in shards]
    ends = []
    for spec in job.spec.students:
        ckpt = checkpoints.latest(job.paths, spec.name)
        rounds = ckpt.meta["rounds"] if ckpt else []
        reps = [r for rd in rounds for r in rd["replicas"]]
        tokens = sum(r["tokens"] for r in reps)
        seconds = sum(r["seconds"] for r in reps)
        ev = (
            read_json(job.paths.student_eval(spec.name))
            if job.paths.student_eval(spec.name).exists()
            else {}
        )
        loss = job.spec.loss_for(spec)
        starts += [r["started_at"] for r in reps]
        ends += [rd["merged_at"] for rd in rounds]
        out["students"][spec.name] = {
            "model": spec.model,
            "method": spec.method,
            "replicas": spec.replicas,
            "loss": {"kind": loss.kind, "alpha": loss.alpha},
            "eval_loss": ev.get("loss"),
            "version": ckpt.version if ckpt else 0,
            "steps": ckpt.meta["step"] if ckpt else 0,
            "tokens": tokens,
            "tokens_per_s": round(tokens / seconds, 1) if seconds else None,
            "first_step_at": min((r["started_at"] for r in reps), default=None),
            "outputs": ev.get("outputs"),
            "curve": [p for rd in rounds for p in rd["curve"]],
        }
    if starts and ends:
        out["wall_seconds"] = round(max(ends) - min(starts), 1)
        out["first_shard_done_at"] = min((s["finished_at"] for s in shards), default=None)
        out["last_shard_done_at"] = max((s["finished_at"] for s in shards), default=None)
    return out


def write(job: Job) -> dict[str, Any]:
    data = collect(job)
    curves = {name: s.pop("curve") for name, s in data["students"].items()}
    plot(job, data, curves)
    write_json(job.paths.report, data)  # last: report.json is what marks the job done
    return data


def plot(job: Job, data: dict[str, Any], curves: dict[str, list[list[float]]]) -> None:
    """Training loss per track (smoothed), held-out losses, teacher reference line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, curve in curves.items():
        if not curve:
            continue
        steps = [p[0] for p in curve]
        ce = _smooth([p[2] for p in curve])
        ax.plot(steps, ce, label=f"{name}: train CE")
    if data["teacher"] and data["teacher"]["eval_loss"] is not None:
        ax.axhline(data["teacher"]["eval_loss"], color="k", ls="--", label="teacher held-out")
        bx.bar(["teacher"], [data["teacher"]["eval_loss"]], color="0.3")
    names = [n for n, s in data["students"].items() if s["eval_loss"] is not None]
    bx.bar(names, [data["students"][n]["eval_loss"] for n in names], color="tab:blue")
    for i, n in enumerate(names, start=1 if data["teacher"] else 0):
        bx.text(
            i,
            data["students"][n]["eval_loss"],
            f"{data['students'][n]['eval_loss']:.3f}",
            ha="center",
            va="bottom",
        )
    ax.set(
        xlabel="optimizer step", ylabel="cross-entropy (nats/token)", title=f"training — {job.id}"
    )
    ax.legend()
    bx.set(ylabel="held-out CE (nats/token)", title="held-out loss (lower is better)")
    fig.tight_layout()
    with atomic_path(job.paths.report_png) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _smooth(values: list[float], window: int = 9) -> list[float]:
    out = []
    for i in range(len(values)):
        chunk = [v for v in values[max(0, i - window + 1) : i + 1] if not math.isnan(v)]
        out.append(sum(chunk) / len(chunk) if chunk else math.nan)
    return out


def summary_table(data: dict[str, Any]) -> str:
    """A short plain-text table of the report for the terminal."""
    lines = [f"job {data['job_id']} ({data['mode']}), wall {data.get('wall_seconds', '?')} s"]
    if data["teacher"]:
        t = data["teacher"]
        lines.append(
            f"  teacher  held-out {t['eval_loss']:.4f}  {t['tokens_per_s']} tok/s"
            if t["eval_loss"] is not None
            else "  teacher"
        )
    c = data["cache"]
    if c["bytes_per_position"]:
        lines.append(
            f"  cache    {c['bytes'] / 1e6:.2f} MB, {c['target_positions']} positions, {c['bytes_per_position']} B/position (k={c['k']})"
        )
    for name, s in data["students"].items():
        ev = f"{s['eval_loss']:.4f}" if s["eval_loss"] is not None else "n/a"
        lines.append(
            f"  {name:<8} held-out {ev}  alpha={s['loss']['alpha']}  {s['method']}  "
            f"{s['steps']} steps  {s['tokens_per_s']} tok/s"
        )
    return "\n".join(lines)


def dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2)
