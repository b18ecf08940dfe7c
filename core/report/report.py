"""``report.json``, ``report.png`` and ``report.md`` for a finished job, from storage alone."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from distillq.core.job.jobs import Job
from distillq.core.job.spec import StudentSpec
from distillq.core.report import card
from distillq.core.report import markdown as report_md
from distillq.core.student import aligned
from distillq.core.targets import registry as targets
from distillq.core.targets.shard import Shard
from distillq.core.targets.topk import token_logprobs
from distillq.storage import cache, checkpoints, records
from distillq.storage.atomic import atomic_path, write_bytes
from distillq.storage.records import CheckpointMeta, EvalResult, OnPolicyRound, ShardStats
from distillq.storage.report_records import (
    AlignmentSummary,
    CacheSummary,
    LossSummary,
    Report,
    StudentSummary,
    TeacherSummary,
    in_bits_per_byte,
)


def _shard_stats(job: Job) -> list[ShardStats]:
    return [
        cache.read_stats(job.paths.shard_stats(i))
        for i in range(job.n_shards)
        if job.paths.shard_stats(i).exists()
    ]


Curves = dict[str, list[list[float]]]


def _cache_summary(job: Job, shards: list[ShardStats]) -> CacheSummary:
    """What the cache holds: its size, what kind of targets, and where they came from."""
    positions = sum(s.target_positions for s in shards)
    cache_bytes = sum(s.bytes for s in shards)
    kinds: dict[str, int] = {}
    where: dict[str, list[int]] = {}
    for st in shards:
        for kind, n in st.targets.items():
            kinds[kind] = kinds.get(kind, 0) + n
            where.setdefault(kind, []).append(st.shard)
    t = job.spec.teacher
    return CacheSummary(
        bytes=cache_bytes,
        target_positions=positions,
        bytes_per_position=round(cache_bytes / positions, 1) if positions and t else None,
        k=t.width if t else 0,
        method=t.target_method if t else targets.TOPK,
        sources=sorted({st.source for st in shards}),
        targets=kinds,
        shard_targets=where,
        fallback_positions=sum(st.fallback_positions for st in shards),
        cache_job=job.info.cache_job,
    )


def _padding(parts: list[tuple[int, float | None, float | None]]) -> list[float] | None:
    """Padding over several runs from each one's (real tokens, padding, padding ungrouped)."""
    known = [(n, a, b) for n, a, b in parts if a is not None and b is not None and n]
    if not known:
        return None
    tokens = sum(n for n, _, _ in known)
    cells = sum(n / (1 - a) for n, a, _ in known)
    plain = sum(n / (1 - b) for n, _, b in known)
    return [round(1 - tokens / cells, 4), round(1 - tokens / plain, 4)]


def _teacher_summary(job: Job, shards: list[ShardStats]) -> TeacherSummary | None:
    if not job.spec.teacher:
        return None
    t_tokens = sum(s.tokens for s in shards)
    t_seconds = sum(s.seconds for s in shards)
    ev = records.read_if_exists(EvalResult, job.paths.teacher_eval)
    return TeacherSummary(
        model=job.spec.teacher.model,
        eval_loss=ev.loss if ev else None,
        tokens=t_tokens,
        tokens_per_s=round(t_tokens / t_seconds, 1) if t_seconds else None,
        generations=ev.generations if ev else [],
        padding=_padding([(s.tokens, s.padding, s.padding_ungrouped) for s in shards]),
        quantization=job.info.teacher_quantization,
        eval_bpb=_bpb(ev),
    )


@dataclass
class _Track:
    """A track as the report sees it: its summary, curve, and when its work ran."""

    summary: StudentSummary
    curve: list[list[float]]
    started: list[float]
    merged: list[float]
    eval: EvalResult | None


def _track(job: Job, spec: StudentSpec) -> _Track:
    ckpt = checkpoints.latest(job.paths, spec.name)
    rounds = ckpt.meta.rounds if ckpt else []
    reps = [r for rd in rounds for r in rd.replicas]
    tokens = sum(r.tokens for r in reps)
    seconds = sum(r.seconds for r in reps)
    sev = records.read_if_exists(EvalResult, job.paths.student_eval(spec.name))
    loss = job.spec.loss_for(spec)
    summary = StudentSummary(
        model=spec.model,
        method=spec.method,
        replicas=spec.replicas,
        loss=LossSummary(
            kind=loss.kind,
            alpha=loss.alpha,
            on_policy_kind=job.spec.on_policy_loss(spec).kind if spec.on_policy else "",
        ),
        eval_loss=sev.loss if sev else None,
        version=ckpt.version if ckpt else 0,
        steps=ckpt.meta.step if ckpt else 0,
        tokens=tokens,
        tokens_per_s=round(tokens / seconds, 1) if seconds else None,
        first_step_at=min((r.started_at for r in reps), default=None),
        outputs=sev.outputs if sev else None,
        baseline_loss=sev.baseline if sev else None,
        heldout_curve=_heldout_curve(ckpt.meta) if ckpt else [],
        generations=sev.generations if sev else [],
        padding=_padding([(r.tokens, r.padding, r.padding_ungrouped) for r in reps]),
        alignment=_alignment(job, spec.name),
        eval_bpb=_bpb(sev),
        on_policy=dataclasses.replace(sev.on_policy, rounds=onpolicy_rounds(job, spec.name))
        if sev and sev.on_policy
        else None,
    )
    curve = [p for rd in rounds for p in rd.curve]
    return _Track(
        summary, curve, [r.started_at for r in reps], [rd.merged_at for rd in rounds], sev
    )


def onpolicy_rounds(job: Job, track: str, show: int = 3) -> list[OnPolicyRound]:
    """Per finished round: the teacher's mean log-prob per token of what the student wrote,
    and (at ``show`` rounds: first, middle, last) the first sample's text."""
    spec = job.spec.student(track)
    n = job.rounds(track)
    shown = {0, n // 2, n - 1} if show else set()
    out = []
    for r in range(n):
        lp_sum, lp_n, samples, text, version = 0.0, 0, 0, "", 0
        for part in range(spec.parts):
            f = job.paths.onpolicy_scored(track, r, part)
            if not f.exists():
                continue
            src = job.paths.onpolicy_samples(track, r, part)
            with cache.CacheReader(src) as s:
                version = int(s.attrs.get("target_source", "v0").rsplit("v", 1)[-1] or 0)
                if r in shown and not text and len(s):
                    text = s.generated(0)[1]
            with Shard(f) as reader:
                samples += len(reader)
                if len(reader):
                    b = reader.batch_of(np.arange(len(reader)))
                    assert b.target_ids is not None and b.target_logprobs is not None
                    lps, found = token_logprobs(b.target_ids, b.target_logprobs, b.padded.labels)
                    lp_sum += float(lps[found].sum())
                    lp_n += int(found.sum())
        if samples:
            out.append(
                OnPolicyRound(r, version, samples, round(lp_sum / lp_n, 5) if lp_n else None, text)
            )
    return out


def _alignment(job: Job, track: str) -> AlignmentSummary | None:
    """Summed over the track's aligned shards (none where it shares the cache's tokenizer)."""
    if not aligned.crosses(job, track):
        return None
    fp = job.info.fingerprints.students[track].tokenizer
    files = [job.paths.aligned_shard(i, fp) for i in range(job.n_shards)]
    shares = [aligned.read_shares(f) for f in files if f.exists()]
    return AlignmentSummary(
        exact=sum(s.exact for s in shares),
        chain=sum(s.chain for s in shares),
        split=sum(s.split for s in shares),
        none=sum(s.none for s in shares),
        bytes=sum(f.stat().st_size for f in files if f.exists()),
    )


def collect(job: Job) -> tuple[Report, Curves]:
    """The report of ``job`` from storage, and each track's training curve (for the plot)."""
    shards = _shard_stats(job)
    teacher = _teacher_summary(job, shards)
    tracks = {spec.name: _track(job, spec) for spec in job.spec.students}
    students = {name: tr.summary for name, tr in tracks.items()}
    starts = [s.started_at for s in shards] + [x for tr in tracks.values() for x in tr.started]
    ends = [x for tr in tracks.values() for x in tr.merged]
    if not tracks:  # a cache-only job ends with its last shard
        ends = [s.finished_at for s in shards]
    timed = bool(starts and ends)
    eval_samples = max((tr.eval.samples for tr in tracks.values() if tr.eval), default=0)
    ce_track, closed = ce_gap(students, teacher)
    vocab = job.info.fingerprints.vocab_size
    report = Report(
        job_id=job.id,
        mode=job.spec.mode,
        records=job.split.n_records,
        eval_records=len(job.split.eval_ids()),
        shards=job.n_shards,
        teacher=teacher,
        cache=_cache_summary(job, shards),
        students=students,
        vocab_size=vocab,
        eval_samples=eval_samples,
        warnings=warnings(eval_samples, students, teacher, vocab),
        ce_track=ce_track,
        ce_gap_closed=closed,
        wall_seconds=round(max(ends) - min(starts), 1) if timed else None,
        first_shard_done_at=min((s.finished_at for s in shards), default=None) if timed else None,
        last_shard_done_at=max((s.finished_at for s in shards), default=None) if timed else None,
    )
    return report, {name: tr.curve for name, tr in tracks.items()}


def _bpb(ev: EvalResult | None) -> float | None:
    v = ev.bits_per_byte if ev else None
    return round(v, 4) if v is not None else None


def ce_gap(
    students: dict[str, StudentSummary], teacher: TeacherSummary | None
) -> tuple[str | None, dict[str, float]]:
    """What distillation bought, where a CE-only track (α = 1) trained alongside: each other
    track's share of the held-out gap between that track and the teacher.

    In bits per byte where every model has it (tracks of other tokenizers than the teacher's
    compare only so; with one tokenizer the shares are the same as in nats per token)."""

    def value(x: StudentSummary | TeacherSummary) -> float | None:
        return x.eval_bpb if in_bytes else x.eval_loss

    in_bytes = in_bits_per_byte(students, teacher)
    ce = [n for n, st in students.items() if st.loss.alpha >= 1.0 and value(st) is not None]
    t = value(teacher) if teacher else None
    if len(ce) != 1 or t is None:
        return None, {}
    base = value(students[ce[0]])
    assert base is not None
    if not base > t:
        return None, {}
    closed = {
        n: round((base - v) / (base - t), 4)
        for n, st in students.items()
        if n != ce[0] and (v := value(st)) is not None
    }
    return ce[0], closed


MIN_EVAL_SAMPLES = 50
LEARNED_LITTLE = 0.05
"""A track whose held-out loss fell by less than this share of its baseline → teacher gap
(or of the baseline itself, without a teacher) is flagged as having learned little."""


def _heldout_curve(meta: CheckpointMeta) -> list[list[float]]:
    """(step, held-out loss) from before round 1 to the last merge, where measured."""
    points = [[0.0, meta.heldout_start]] if meta.heldout_start is not None else []
    step = 0
    for rd in meta.rounds:
        step += max((r.steps for r in rd.replicas), default=0)
        if rd.heldout is not None:
            points.append([float(step), rd.heldout])
    return points


def warnings(
    eval_samples: int,
    students: dict[str, StudentSummary],
    teacher: TeacherSummary | None,
    vocab: int | None,
) -> list[str]:
    """What a reader must know before trusting the numbers."""
    out = []
    if eval_samples < MIN_EVAL_SAMPLES:
        out.append(
            f"held-out set has {eval_samples} samples (fewer than {MIN_EVAL_SAMPLES}): its "
            "losses are noisy; raise eval_fraction or add records"
        )
    for name, st in students.items():
        if st.baseline_loss is None or st.eval_loss is None:
            continue
        target = teacher.eval_loss if teacher and teacher.eval_loss is not None else 0.0
        gap = st.baseline_loss - min(target, st.baseline_loss)
        gained = st.baseline_loss - st.eval_loss
        if gap > 0 and gained < LEARNED_LITTLE * gap:
            uniform = f", uniform guessing is ln V = {math.log(vocab):.2f}" if vocab else ""
            out.append(
                f"track {name} learned little: held-out {st.eval_loss:.4f} vs {st.baseline_loss:.4f} "
                f"before training{uniform}; train longer, raise lr, or check the data"
            )
    return out


def write(job: Job) -> Report:
    data, curves = collect(job)
    plot(job, data, curves, _timeline(job))
    write_bytes(job.paths.report_md, report_md.render(data).encode())
    card.write_cards(job.spec, data)
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
    """Training curves, the held-out curve, the stage timeline and a summary, in one PNG.

    Legends sit outside the axes (they never cover a point) and the layout engine places
    every label, so nothing overlaps whatever the numbers are.
    """
    import matplotlib  # here: only finalize and `report` draw; the CLI loads this module

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(15, 9), layout="constrained")
    _plot_curves(axes[0][0], curves)
    _plot_heldout(axes[0][1], data)
    _plot_timeline(axes[1][0], timeline)
    _plot_summary(axes[1][1], data)
    fig.suptitle(f"distillq — {job.id}", fontsize=12)
    with atomic_path(job.paths.report_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _legend_outside(ax: Any) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def _plot_curves(ax: Any, curves: Curves) -> None:
    for i, (name, curve) in enumerate(curves.items()):
        if not curve:
            continue
        color = f"C{i}"
        steps = [p[0] for p in curve]
        ax.plot(steps, _smooth([p[2] for p in curve]), color=color, label=f"{name}: train CE")
        kd = [p[3] for p in curve]
        if not all(math.isnan(v) for v in kd):
            ax.plot(steps, _smooth(kd), color=color, ls=":", label=f"{name}: KD term")
    ax.set(xlabel="optimizer step", ylabel="nats / token", title="training curves (smoothed)")
    _legend_outside(ax)


def _plot_heldout(ax: Any, data: Report) -> None:
    for i, (name, st) in enumerate(data.students.items()):
        color = f"C{i}"
        if st.heldout_curve:
            xs, ys = zip(*st.heldout_curve, strict=True)
            ax.plot(xs, ys, color=color, marker="o", ms=4, label=f"{name}: after each round")
        if st.eval_loss is not None and st.baseline_loss is not None:
            ax.scatter(
                [0, st.steps],
                [st.baseline_loss, st.eval_loss],
                color=color,
                marker="*",
                s=120,
                zorder=3,
                label=f"{name}: all held-out, before → after",
            )
    if data.teacher and data.teacher.eval_loss is not None:
        ax.axhline(data.teacher.eval_loss, color="k", ls="--", label="teacher")
    ax.set(
        xlabel="optimizer step",
        ylabel="held-out CE (nats / token)",
        title=f"held-out loss, lower is better ({data.eval_samples} samples)",
    )
    _legend_outside(ax)


def _plot_timeline(ax: Any, timeline: list[tuple[str, float, float, float]]) -> None:
    if not timeline:
        return
    t0 = min(r[1] for r in timeline)
    span = max(r[2] for r in timeline) - t0
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
        if end - start > 0.06 * span:  # a label only where the bar is wide enough to hold it
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


def _plot_summary(ax: Any, data: Report) -> None:
    ax.axis("off")
    ax.text(
        0.0,
        1.0,
        "\n".join(summary_lines(data)),
        va="top",
        family="monospace",
        fontsize=9,
        transform=ax.transAxes,
    )
    ax.set_title("summary")


def summary_lines(data: Report) -> list[str]:
    """Cache, throughput and baseline → final per track, as short lines."""
    c = data.cache
    lines = []
    if c.bytes_per_position:
        lines.append(f"cache {c.bytes / 1e6:.2f} MB, {c.bytes_per_position} B/position (top-{c.k})")
        if data.vocab_size:
            full = 2 * data.vocab_size
            lines.append(
                f"  full fp16 rows would be {full:,} B/position ({full / c.bytes_per_position:.0f}x)"
            )
    if data.teacher:
        t = data.teacher
        ev = f"{t.eval_loss:.4f}" if t.eval_loss is not None else "n/a"
        lines.append(f"teacher held-out {ev}, {t.tokens_per_s} tokens/s")
    for name, st in data.students.items():
        lines.append(f"{name}: {st.method}, {st.steps} steps, {st.tokens_per_s} tokens/s")
        if st.baseline_loss is not None and st.eval_loss is not None:
            lines.append(f"  held-out {st.baseline_loss:.4f} → {st.eval_loss:.4f}")
    lines.append(f"held-out samples: {data.eval_samples}")
    lines += [f"! {w[:70]}…" if len(w) > 70 else f"! {w}" for w in data.warnings]
    return lines


def _smooth(values: list[float], window: int = 9) -> list[float]:
    out = []
    for i in range(len(values)):
        chunk = [v for v in values[max(0, i - window + 1) : i + 1] if not math.isnan(v)]
        out.append(sum(chunk) / len(chunk) if chunk else math.nan)
    return out


def summary_table(data: Report) -> str:
    """A short plain-text table of the report for the terminal."""
    wall = data.wall_seconds if data.wall_seconds is not None else "?"
    lines = [
        f"job {data.job_id} ({data.mode}), wall {wall} s, {data.eval_samples} held-out samples"
    ]
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
            f"  cache    {c.bytes / 1e6:.2f} MB, {c.target_positions} positions, "
            f"{c.bytes_per_position} B/position ({report_md.targets_word(c)})"
        )
    for name, s in data.students.items():
        ev = f"{s.eval_loss:.4f}" if s.eval_loss is not None else "n/a"
        before = f" (untrained {s.baseline_loss:.4f})" if s.baseline_loss is not None else ""
        lines.append(
            f"  {name:<8} held-out {ev}{before}  alpha={s.loss.alpha}  {s.method}  "
            f"{s.steps} steps  {s.tokens_per_s} tok/s"
        )
    for name, share in data.ce_gap_closed.items():
        lines.append(
            f"  {name} closed {share:.0%} of the held-out gap between the CE-only track "
            f"{data.ce_track} and the teacher"
        )
    lines += [f"  warning: {w}" for w in data.warnings]
    return "\n".join(lines)


def dumps(data: Report) -> str:
    return json.dumps(records.to_json(data), indent=2)
