"""``report.json`` + ``report.png`` for a finished job, assembled from storage alone."""

from __future__ import annotations

import json
import math
from typing import Any

from core.job import Job
from storage import cache, checkpoints, records
from storage.atomic import atomic_path
from storage.records import (
    CacheSummary,
    EvalResult,
    LossSummary,
    Report,
    ShardStats,
    StudentSummary,
    TeacherSummary,
)


def _shard_stats(job: Job) -> list[ShardStats]:
    return [
        cache.read_stats(job.paths.shard_stats(i))
        for i in range(job.n_shards)
        if job.paths.shard_stats(i).exists()
    ]


Curves = dict[str, list[list[float]]]


def collect(job: Job) -> tuple[Report, Curves]:
    """The report of ``job`` from storage, and each track's training curve (for the plot)."""
    shards = _shard_stats(job)
    positions = sum(s.target_positions for s in shards)
    cache_bytes = sum(s.bytes for s in shards)
    t_tokens = sum(s.tokens for s in shards)
    t_seconds = sum(s.seconds for s in shards)
    teacher = None
    if job.spec.teacher:
        ev = records.read_if_exists(EvalResult, job.paths.teacher_eval)
        teacher = TeacherSummary(
            model=job.spec.teacher.model,
            eval_loss=ev.loss if ev else None,
            tokens=t_tokens,
            tokens_per_s=round(t_tokens / t_seconds, 1) if t_seconds else None,
        )
    students, curves = {}, {}
    starts = [s.started_at for s in shards]
    ends = []
    for spec in job.spec.students:
        ckpt = checkpoints.latest(job.paths, spec.name)
        rounds = ckpt.meta.rounds if ckpt else []
        reps = [r for rd in rounds for r in rd.replicas]
        tokens = sum(r.tokens for r in reps)
        seconds = sum(r.seconds for r in reps)
        sev = records.read_if_exists(EvalResult, job.paths.student_eval(spec.name))
        loss = job.spec.loss_for(spec)
        starts += [r.started_at for r in reps]
        ends += [rd.merged_at for rd in rounds]
        students[spec.name] = StudentSummary(
            model=spec.model,
            method=spec.method,
            replicas=spec.replicas,
            loss=LossSummary(kind=loss.kind, alpha=loss.alpha),
            eval_loss=sev.loss if sev else None,
            version=ckpt.version if ckpt else 0,
            steps=ckpt.meta.step if ckpt else 0,
            tokens=tokens,
            tokens_per_s=round(tokens / seconds, 1) if seconds else None,
            first_step_at=min((r.started_at for r in reps), default=None),
            outputs=sev.outputs if sev else None,
        )
        curves[spec.name] = [p for rd in rounds for p in rd.curve]
    timing: dict[str, float | None] = {}
    if starts and ends:
        timing = {
            "wall_seconds": round(max(ends) - min(starts), 1),
            "first_shard_done_at": min((s.finished_at for s in shards), default=None),
            "last_shard_done_at": max((s.finished_at for s in shards), default=None),
        }
    report = Report(
        job_id=job.id,
        mode=job.spec.mode,
        records=job.split.n_records,
        eval_records=len(job.split.eval_ids()),
        shards=job.n_shards,
        teacher=teacher,
        cache=CacheSummary(
            bytes=cache_bytes,
            target_positions=positions,
            bytes_per_position=round(cache_bytes / positions, 1)
            if positions and job.spec.has_teacher
            else None,
            k=job.spec.teacher.top_k if job.spec.teacher else 0,
        ),
        students=students,
        vocab_size=job.info.fingerprints.vocab_size,
        **timing,
    )
    return report, curves


def write(job: Job) -> Report:
    data, curves = collect(job)
    plot(job, data, curves, _timeline(job))
    records.write(job.paths.report, data)  # last: report.json is what marks the job done
    return data


def _timeline(job: Job) -> list[tuple[str, float, float, float]]:
    """(lane, start, end, tokens/s) of every teacher shard and student replica."""
    rows = [("teacher", s.started_at, s.finished_at, s.tokens_per_s) for s in _shard_stats(job)]
    for spec in job.spec.students:
        ckpt = checkpoints.latest(job.paths, spec.name)
        for rd in ckpt.meta.rounds if ckpt else []:
            rows += [(spec.name, r.started_at, r.finished_at, r.tokens_per_s) for r in rd.replicas]
    return rows


def plot(
    job: Job,
    data: Report,
    curves: Curves,
    timeline: list[tuple[str, float, float, float]],
) -> None:
    """Curves, held-out losses, the stage timeline and the cache size, in one PNG."""
    import matplotlib  # here: only finalize and `report` draw; the CLI loads this module

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    _plot_curves(axes[0][0], data, curves)
    _plot_heldout(axes[0][1], data)
    _plot_timeline(axes[1][0], timeline)
    _plot_cache(axes[1][1], data)
    fig.suptitle(f"distillq — {job.id}", fontsize=12)
    fig.tight_layout()
    with atomic_path(job.paths.report_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _plot_curves(ax: Any, data: Report, curves: Curves) -> None:
    for i, (name, curve) in enumerate(curves.items()):
        if not curve:
            continue
        color = f"C{i}"
        steps = [p[0] for p in curve]
        ax.plot(steps, _smooth([p[2] for p in curve]), color=color, label=f"{name}: train CE")
        kd = [p[3] for p in curve]
        if not all(math.isnan(v) for v in kd):
            ax.plot(steps, _smooth(kd), color=color, ls=":", label=f"{name}: KD term")
        ev = data.students[name].eval_loss
        if ev is not None:
            ax.scatter(
                [steps[-1]],
                [ev],
                color=color,
                marker="*",
                s=120,
                zorder=3,
                label=f"{name}: held-out",
            )
    if data.teacher and data.teacher.eval_loss is not None:
        ax.axhline(data.teacher.eval_loss, color="k", ls="--", label="teacher held-out")
    ax.set(xlabel="optimizer step", ylabel="nats / token", title="training curves (smoothed)")
    ax.legend(fontsize=8)


def _plot_heldout(ax: Any, data: Report) -> None:
    bars_data: list[tuple[str, float, str]] = []
    if data.teacher and data.teacher.eval_loss is not None:
        bars_data.append(("teacher", data.teacher.eval_loss, "0.35"))
    for i, (n, s) in enumerate(data.students.items()):
        if s.eval_loss is not None:
            bars_data.append((f"{n}\n(α={s.loss.alpha})", s.eval_loss, f"C{i}"))
    names = [b[0] for b in bars_data]
    values = [b[1] for b in bars_data]
    colors = [b[2] for b in bars_data]
    bars = ax.bar(names, values, color=colors)
    for b, v in zip(bars, values, strict=True):
        ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.3f}", ha="center", va="bottom")
    ax.set(ylabel="held-out CE (nats / token)", title="held-out loss (lower is better)")


def _plot_timeline(ax: Any, timeline: list[tuple[str, float, float, float]]) -> None:
    if not timeline:
        return
    t0 = min(r[1] for r in timeline)
    lanes = list(dict.fromkeys(r[0] for r in timeline))
    for lane, start, end, rate in timeline:
        y = lanes.index(lane)
        ax.barh(
            y,
            end - start,
            left=start - t0,
            height=0.6,
            color="0.35" if lane == "teacher" else f"C{y - 1}",
            edgecolor="white",
        )
        ax.text(
            start - t0 + (end - start) / 2,
            y,
            f"{rate / 1000:.1f}k",
            ha="center",
            va="center",
            color="white",
            fontsize=7,
        )
    ax.set_yticks(range(len(lanes)), lanes)
    ax.invert_yaxis()
    ax.set(
        xlabel="seconds since the first task started", title="stages over time (label: tokens/s)"
    )


def _plot_cache(ax: Any, data: Report) -> None:
    c = data.cache
    ax.axis("off")
    lines = [
        f"teacher cache: {c.bytes / 1e6:.2f} MB",
        f"target positions: {c.target_positions:,}",
    ]
    if c.bytes_per_position:
        vocab = data.vocab_size or 0
        lines.append(f"bytes / position: {c.bytes_per_position} (top-{c.k})")
        if vocab:
            lines.append(
                f"full-vocabulary fp16 would be {2 * vocab:,} B / position ({2 * vocab / c.bytes_per_position:.0f}x)"
            )
    if data.teacher:
        lines.append(f"teacher throughput: {data.teacher.tokens_per_s} tokens/s")
    for name, st in data.students.items():
        lines.append(f"{name}: {st.steps} steps, {st.tokens_per_s} tokens/s, {st.method}")
    ax.text(
        0.02,
        0.95,
        "\n".join(lines),
        va="top",
        family="monospace",
        fontsize=10,
        transform=ax.transAxes,
    )
    ax.set_title("cache and throughput")


def _smooth(values: list[float], window: int = 9) -> list[float]:
    out = []
    for i in range(len(values)):
        chunk = [v for v in values[max(0, i - window + 1) : i + 1] if not math.isnan(v)]
        out.append(sum(chunk) / len(chunk) if chunk else math.nan)
    return out


def summary_table(data: Report) -> str:
    """A short plain-text table of the report for the terminal."""
    wall = data.wall_seconds if data.wall_seconds is not None else "?"
    lines = [f"job {data.job_id} ({data.mode}), wall {wall} s"]
    if data.teacher:
        t = data.teacher
        lines.append(
            f"  teacher  held-out {t.eval_loss:.4f}  {t.tokens_per_s} tok/s"
            if t.eval_loss is not None
            else "  teacher"
        )
    c = data.cache
    if c.bytes_per_position:
        lines.append(
            f"  cache    {c.bytes / 1e6:.2f} MB, {c.target_positions} positions, {c.bytes_per_position} B/position (k={c.k})"
        )
    for name, s in data.students.items():
        ev = f"{s.eval_loss:.4f}" if s.eval_loss is not None else "n/a"
        lines.append(
            f"  {name:<8} held-out {ev}  alpha={s.loss.alpha}  {s.method}  "
            f"{s.steps} steps  {s.tokens_per_s} tok/s"
        )
    return "\n".join(lines)


def dumps(data: Report) -> str:
    return json.dumps(records.to_json(data), indent=2)
