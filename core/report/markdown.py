"""``report.md``: the report as a person reads it — what each student learned, the held-out
curve, and what the teacher and each student write on the same held-out prompts."""

from __future__ import annotations

from distillq.core.targets import registry as targets
from distillq.storage.report_records import CacheSummary, Report, in_bits_per_byte


def _loss(v: float | None) -> str:
    return f"{v:.4f}" if v is not None else "n/a"


def _fence(text: str) -> str:
    body = text.replace("```", "` ` `")  # a fence inside generated code must not close ours
    return f"```\n{body}\n```"


def _learned(data: Report) -> list[str]:
    teacher = data.teacher.eval_loss if data.teacher else None
    lines = [
        "| track | method | α | untrained | final | change | share of the gap to the teacher "
        "closed | bits/byte |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, st in data.students.items():
        change, closed = "", ""
        if st.baseline_loss is not None and st.eval_loss is not None:
            change = f"{st.eval_loss - st.baseline_loss:+.4f}"
            base, final, target = st.baseline_loss, st.eval_loss, teacher
            t_bpb = data.teacher.eval_bpb if data.teacher else None
            if st.eval_bpb is not None and t_bpb is not None and st.eval_loss > 0:
                # The same samples before and after: bytes per token is the final's ratio.
                per = st.eval_bpb / st.eval_loss
                base, final, target = base * per, st.eval_bpb, t_bpb
            if target is not None and base > target:
                closed = f"{(base - final) / (base - target):.0%}"
        lines.append(
            f"| {name} | {st.method} | {st.loss.alpha} | {_loss(st.baseline_loss)} | "
            f"{_loss(st.eval_loss)} | {change} | {closed} | {_loss(st.eval_bpb)} |"
        )
    if teacher is not None:
        t_bpb = data.teacher.eval_bpb if data.teacher else None
        lines.append(f"| teacher | | | | {teacher:.4f} | | | {_loss(t_bpb)} |")
    if data.ce_track and data.teacher is not None:
        ce_st, t = data.students[data.ce_track], data.teacher
        in_bytes = in_bits_per_byte(data.students, t)
        ce, tv = (ce_st.eval_bpb, t.eval_bpb) if in_bytes else (ce_st.eval_loss, t.eval_loss)
        said = ", ".join(f"**{n}** {v:.0%}" for n, v in data.ce_gap_closed.items())
        unit = "bits per byte" if in_bytes else "nats per token"
        lines += [
            "",
            f"Share of the held-out gap between the CE-only track {data.ce_track} "
            f"({_loss(ce)}) and the teacher ({_loss(tv)}) that distillation closed, "
            f"(CE − track) / (CE − teacher), in {unit}: {said}.",
        ]
    cross = [n for n, st in data.students.items() if st.alignment]
    if cross:
        lines += [
            "",
            f"{', '.join(cross)} use{'s' if len(cross) == 1 else ''} another tokenizer than "
            "the teacher's: nats per token do not compare across tokenizers, bits per byte do.",
        ]
    return lines


def targets_word(c: CacheSummary) -> str:
    """What the cache holds per position, in a few words."""
    return targets.describe(c.method, c.k)


def _curve(data: Report) -> list[str]:
    tracks = [
        (n, dict((int(s), v) for s, v in st.heldout_curve)) for n, st in data.students.items()
    ]
    steps = sorted({s for _, c in tracks for s in c})
    if not steps:
        return ["(no held-out curve: `curve_samples` is 0, or no round merged)"]
    lines = [
        "| step | " + " | ".join(n for n, _ in tracks) + " |",
        "|---" * (len(tracks) + 1) + "|",
    ]
    for step in steps:
        lines.append(f"| {step} | " + " | ".join(_loss(c.get(step)) for _, c in tracks) + " |")
    return lines


def _generations(data: Report) -> list[str]:
    models = {n: st.generations for n, st in data.students.items()}
    if data.teacher and data.teacher.generations:
        models = {"teacher": data.teacher.generations, **models}
    n = max((len(g) for g in models.values()), default=0)
    if not n:
        return ["(no held-out prompts)"]
    first = next(g for g in models.values() if g)
    lines: list[str] = []
    for i in range(n):
        lines += [
            f"### prompt {i + 1}",
            "",
            _fence(first[i].prompt),
            "",
            "reference (the data):",
            "",
        ]
        lines += [_fence(first[i].reference), ""]
        for name, gens in models.items():
            if i < len(gens):
                lines += [f"**{name}**:", "", _fence(gens[i].text), ""]
    return lines


KIND_TEXT = {
    "scored": "samples scored as given",
    "generated": "responses the teacher wrote, with its {targets}",
    "generated_text": "responses the teacher wrote as text only (sequence-level KD: CE)",
}


def _targets(c: CacheSummary) -> str:
    return targets.plain(c.method)


def _teacher_line(data: Report) -> str:
    t, c = data.teacher, data.cache
    assert t is not None
    how = t.quantization
    rate = f", {t.tokens_per_s:,.0f} tokens/s" if t.tokens_per_s else ""
    per = f", {c.bytes_per_position:.1f} bytes per target position" if c.bytes_per_position else ""
    shared = f" (the cache of job {c.cache_job}, reused)" if c.cache_job else ""
    return (
        f"Teacher {t.model}{f' ({how})' if how else ''}: held-out CE {_loss(t.eval_loss)}"
        f"{rate}. Cache{shared}: {c.bytes / 1e6:,.1f} MB over {c.target_positions:,} target "
        f"positions{per}."
    )


def _alignment(data: Report) -> list[str]:
    """Tracks of another tokenizer: how their positions aligned with the teacher's."""
    rows = [(n, st.alignment) for n, st in data.students.items() if st.alignment]
    if not rows:
        return []
    lines = [
        "## Across tokenizers",
        "",
        "Target positions of each track whose tokenizer is not the teacher's, by how the "
        "teacher's targets reached them: one token for one (exact), several teacher tokens "
        "for one (chain rule), one for several (prefix mass), or not at all (CE only).",
        "",
        "| track | exact | chain | split | CE only | bytes per position |",
        "|---|---|---|---|---|---|",
    ]
    for name, a in rows:
        n = max(1, a.positions)
        lines.append(
            f"| {name} | {a.exact / n:.1%} | {a.chain / n:.1%} | {a.split / n:.1%} | "
            f"{a.none / n:.1%} | {a.bytes / n:.1f} |"
        )
    return [*lines, ""]


def _nats(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _one_line(text: str, width: int = 90) -> str:
    flat = " ".join(text.split())
    return (flat[: width - 1] + "…" if len(flat) > width else flat).replace("|", "\\|")


def _on_policy(data: Report) -> list[str]:
    """On-policy tracks: what the teacher thinks of the student's own text, before and after."""
    rows = [(n, st.on_policy) for n, st in data.students.items() if st.on_policy]
    if not rows:
        return []
    lines = [
        "## On-policy",
        "",
        "The student's greedy continuations of held-out prompts, scored by the teacher: its mean "
        "log-prob per token (higher: the teacher would have written it) and KL(student ‖ "
        "teacher) per token over the teacher's top-k and the tail, before training and after.",
        "",
        "| track | loss: own samples / cache | teacher log-prob before | after | "
        "reverse KL before | after | unlisted |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, op in rows:
        loss = data.students[name].loss
        lines.append(
            f"| {name} | {loss.on_policy_kind} / {loss.kind} (α {loss.alpha:g}) "
            f"| {_nats(op.teacher_logprob_before)} | {_nats(op.teacher_logprob_after)} "
            f"| {_nats(op.reverse_kl_before)} | {_nats(op.reverse_kl_after)} | "
            f"{op.unlisted}/{op.positions} |"
        )
    lines.append("")
    for name, op in rows:
        if op.rounds:
            lines += [
                f"**{name}**, per round: the teacher's log-prob per token of what the student "
                "wrote (its sampled continuations of the round's prompts).",
                "",
                "| round | from version | samples | teacher log-prob | the student wrote |",
                "|---|---|---|---|---|",
            ]
            lines += [
                f"| {r.round} | v{r.version} | {r.samples} | {_nats(r.teacher_logprob)} | "
                f"{_one_line(r.student_text) if r.student_text else ''} |"
                for r in op.rounds
            ]
            lines.append("")
        for ex in op.examples:
            lines += [
                f"**{name}**, held-out prompt:",
                "",
                _fence(ex.prompt),
                "",
                "| who | continuation |",
                "|---|---|",
                f"| teacher | {_one_line(ex.teacher)} |",
                f"| student before | {_one_line(ex.before)} |",
                f"| student after | {_one_line(ex.after)} |",
                "",
            ]
    return lines


def render(data: Report) -> str:
    wall = f", {data.wall_seconds:.0f} s" if data.wall_seconds is not None else ""
    lines = [f"# distillq report: {data.job_id}", ""]
    lines.append(
        f"{data.mode}, {data.records} records in {data.shards} shards, "
        f"{data.eval_samples} held-out samples{wall}."
    )
    lines.append("")
    for w in data.warnings:
        lines += [f"> **Warning:** {w}", ""]
    c = data.cache
    if c.targets:
        kinds = ", ".join(
            f"{n} {KIND_TEXT.get(k, k).format(targets=_targets(c))} "
            f"(shards {', '.join(map(str, c.shard_targets.get(k, [])))})"
            for k, n in c.targets.items()
        )
        fb = (
            f"; {c.fallback_positions} positions had no teacher distribution and trained with CE"
            if c.fallback_positions
            else ""
        )
        lines += [
            f"Teacher targets from {', '.join(c.sources)} ({targets_word(c)}): {kinds}{fb}.",
            "",
        ]
    if data.teacher:
        lines += [_teacher_line(data), ""]
    padded = [("teacher", data.teacher.padding)] if data.teacher else []
    padded += [(name, st.padding) for name, st in data.students.items()]
    if any(p for _, p in padded):
        said = "; ".join(f"{n} {p[0]:.1%} ({p[1]:.1%})" for n, p in padded if p)
        lines += [
            f"Padding, share of batch cells (had batches been consecutive samples): {said}.",
            "",
        ]
    if not data.students:
        return "\n".join(lines)  # a cache-only job: the teacher and its cache are the report
    lines += ["![report](report.png)", "", "## What each student learned", ""]
    lines += [
        "Held-out CE (nats/token) on every held-out sample, before round 1 and at the end.",
        "",
    ]
    lines += [*_learned(data), ""]
    lines += _alignment(data)
    lines += _on_policy(data)
    lines += ["## Held-out curve", ""]
    lines += ["Loss on the first held-out samples after each merged round (step 0: untrained).", ""]
    lines += [*_curve(data), "", "## Generations", ""]
    lines += ["Greedy continuations of held-out prompts.", ""]
    lines += _generations(data)
    outputs = {n: st.outputs for n, st in data.students.items() if st.outputs}
    if outputs:
        lines += ["## Outputs", ""]
        for name, out in outputs.items():
            lines.append(f"- **{name}**: " + ", ".join(f"{k} `{v}`" for k, v in out.entries()))
        lines.append("")
    return "\n".join(lines)
