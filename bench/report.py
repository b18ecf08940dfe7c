"""RESULTS.md and results.png from the benchmark results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def write_plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 2, figsize=(12, 8.5))
    e = r["efficiency"]
    names = ["teacher", "student", "pipeline\n(together ÷ staged)"]
    vals = [e["teacher"]["ratio"], e["student"]["ratio"], r["overlap"]["ratio"]]
    bars = ax[0][0].bar(names, vals, color=["0.35", "C0", "C2"])
    for b, v in zip(bars, vals, strict=True):
        ax[0][0].text(b.get_x() + b.get_width() / 2, v, f"{v:.2f}", ha="center", va="bottom")
    ax[0][0].axhline(1.0, color="k", lw=0.8)
    ax[0][0].set(title="distillq ÷ bare loop (tokens/s); pipeline: wall ratio", ylim=(0, 1.2))

    o = r["offline_vs_online"]["epochs"]
    es = sorted(o, key=int)
    ax[0][1].plot(
        es, [o[x]["distillq_s"] for x in es], "o-", label="distillq (teacher once + cache)"
    )
    ax[0][1].plot(
        es, [o[x]["online_s"] for x in es], "s-", label="online KD (same loop, teacher every step)"
    )
    trl = r.get("trl_gkd", {}).get("epochs", {})
    if trl:
        te = sorted(trl, key=int)
        ax[0][1].plot(
            te,
            [trl[x]["train_s"] for x in te],
            "^-",
            label=f"TRL GKDTrainer {r['trl_gkd']['trl_version']}",
        )
    ax[0][1].set(xlabel="epochs", ylabel="wall seconds", title="offline vs online distillation")
    ax[0][1].legend()

    c = r["cache_size"]
    ks = sorted(c["k"], key=int)
    ax[1][0].plot(
        [int(k) for k in ks],
        [c["k"][k]["bytes_per_position"] for k in ks],
        "o-",
        color="C0",
        label="bytes / position",
    )
    ax[1][0].axhline(160, color="C3", ls="--", label="goal at k=64: 160 B")
    ax[1][0].set(
        xscale="log",
        yscale="log",
        xlabel="k",
        ylabel="bytes / target position",
        title=f"cache size (full-vocab fp16: {c['full_fp16_bytes_per_position']:.0f} B compressed)",
    )
    ax2 = ax[1][0].twinx()
    ax2.plot(
        [int(k) for k in ks],
        [c["k"][k]["kl_full_vs_sparse"] for k in ks],
        "s:",
        color="C1",
        label="KL(full ‖ sparse)",
    )
    ax2.set_ylabel("KL(full ‖ sparse reconstruction)")
    ax[1][0].legend(loc="upper left", fontsize=8)
    ax2.legend(loc="lower left", fontsize=8)

    if "quality" in r:
        quality_bars(ax[1][1], r["quality"])
        write_quality_plot(r["quality"], path.with_name("quality.png"))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _online_row(k: str, v: dict[str, Any], trl: dict[str, Any] | None) -> str:
    trl_s = trl["train_s"] if trl else "n/a"
    vs_trl = f"{trl['train_s'] / v['distillq_s']:.2f}×" if trl else "n/a"
    return (
        f"| {k} | {v['distillq_s']} | {v['online_s']} | {trl_s} | **{v['speedup']}×** / **{vs_trl}** | "
        f"{v['distillq_heldout']} | {v['online_heldout']} | {trl['heldout'] if trl else 'n/a'} |"
    )


def _notes(path: Path) -> list[str]:
    """The hand-written analysis (what the gaps are made of), kept across re-runs."""
    return [path.read_text()] if path.exists() else []


def _served_section(v: dict[str, Any] | None) -> list[str]:
    if not v:
        return []
    runs, d = v["runs"], v["delay_s"]
    rows = []
    for n in (1, 2):
        for delay in (0.0, d):
            cells = [f"{runs[f'servers={n} delay={delay} concurrent={c}']}" for c in (1, 2, 8)]
            rows.append(f"| {n} | {int(delay * 1000)} ms | " + " | ".join(cells) + " |")
    hid, rep, g = v["latency_hidden"], v["replicas_used"], v["generation"]
    return [
        "## Served teachers (llama-cpp-python servers, one thread each)",
        "",
        f"Made by `python -m bench.run --only served` on {v['started']} in {v['seconds']} s: "
        f"the teacher stage function over {v['records']} demo records at k = {v['k']}, against real "
        "`python -m llama_cpp.server` processes serving the demo teacher (f32 GGUF). They run one "
        "request at a time, so concurrency buys hidden latency and used replicas. Local "
        f"transformers teacher on the same model, one thread: {v['local_tokens_per_s']} tokens/s.",
        "",
        "| servers | added delay | tokens/s at 1 in flight | 2 in flight | 8 in flight |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"- **Latency hidden** (200 ms delay ÷ no delay, one server): 1 in flight "
        f"**{hid['concurrent=1']}**, 2 in flight **{hid['concurrent=2']}**, 8 in flight "
        f"**{hid['concurrent=8']}** (goal ≥ 0.9 with ≥ 2 in flight).",
        f"- **Replicas used** (two servers ÷ one, no delay): 1 in flight **{rep['concurrent=1']}**, "
        f"2 in flight **{rep['concurrent=2']}**, 8 in flight **{rep['concurrent=8']}** (goal ≥ 1.6).",
        f"- **Generation stage** vs a bare `model.generate` loop (batch {g['batch']}, "
        f"{g['prompts']} prompts, {g['generated_tokens']} tokens, greedy): {g['stage_s']} s vs "
        f"{g['bare_s']} s, ratio **{g['ratio']}** (goal ≥ 0.9).",
        "",
    ]


def _vocab_section(v: dict[str, Any] | None) -> list[str]:
    if not v:
        return []
    rows = []
    names = {
        "teacher": "teacher scoring (d=128, 2 layers)",
        "student": "student step, LoRA (d=64, 1 layer)",
        "student_0.5b": "student step, LoRA (Qwen2.5-0.5B shape)",
    }
    for role, what in names.items():
        if role not in v:
            continue
        x = v[role]
        peaks = " | ".join(str(x[p]["peak_mb"]) for p in ("naive", "one_pass", "chunked"))
        speeds = " | ".join(str(x[p]["tokens_per_s"]) for p in ("naive", "one_pass", "chunked"))
        rows.append(
            f"| {what} | {x['batch']} | {x['chunked']['model_mb']} | {peaks} | "
            f"**{x['peak_ratio_vs_one_pass']}** / {x['peak_ratio_vs_naive']} | {speeds} | "
            f"**{x['speed_ratio_vs_one_pass']}** / {x['speed_ratio_vs_naive']} |"
        )
    cache = v.get("teacher", {}).get("chunked", {}).get("cache_bytes_per_position")
    return [
        f"## Memory at a real vocabulary (V = {v['vocab']:,})",
        "",
        f"`python -m bench.run --only vocab_memory`: Qwen2-shaped random models with Qwen2.5's "
        f"tied head, {v['length']} tokens per row, k = {v['k']}, two threads, each path in a "
        "fresh process. Naive: `model(**batch).logits` + the loss, as a transformers loop does. "
        "One pass: distillq before issue 13 (the head only at target positions, all at once). "
        "Chunked: the head and the loss over chunks of positions sized from V and a 256 MB "
        "budget, recomputed in the backward (`core/head_loss.py`, `core/teacher.py`). Ratios: "
        "chunked ÷ one pass / chunked ÷ naive.",
        "",
        "| work | batch | model built, MB | naive peak MB | one pass peak MB | chunked peak MB "
        "| peak ratio | naive tok/s | one pass tok/s | chunked tok/s | speed ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        *(
            [
                f"The teacher's cache at V = {v['vocab']:,}, k = {v['k']}, int32 ids: "
                f"**{cache} bytes per target position** (demo text as input).",
                "",
            ]
            if cache
            else []
        ),
    ]


def _init_section(v: dict[str, Any] | None) -> list[str]:
    if not v:
        return []
    a = v["arms"]
    return [
        "## A student from the teacher's layers vs a random one",
        "",
        f"`python -m bench.run --only init_student`: `distillq init-student` on the demo teacher "
        f"({v['shape']}, half its depth), then {v['steps']} steps of plain CE at batch {v['batch']} "
        f"on the same demo batches for both; held-out CE (teacher: {v['teacher_heldout']}).",
        "",
        "| student | held-out before | held-out after |",
        "|---|---|---|",
        *[
            f"| {arm.replace('_', ' ')} | {x['heldout_before']} | **{x['heldout_after']}** |"
            for arm, x in a.items()
        ],
        "",
    ]


def _overhead_section(v: dict[str, Any] | None) -> list[str]:
    if not v:
        return []
    t = v["tokens_per_s"]
    return [
        "## The teacher task's own overhead (small teacher)",
        "",
        "`python -m bench.run --only teacher_overhead`: a 4-layer d = 256 Llama at V = 4,096, "
        f"k = 64, batch 16, {v['tokens']:,} tokens of demo text, two threads everywhere; tokens/s "
        "count real tokens only. Bare loops run `model(**batch)` over the same samples; the task "
        "runs through a real worker (model loaded), the job from `distillq enqueue` to the "
        f"last of 4 shards. Best of {v['repeats']}, sides interleaved.",
        "",
        "| side | tokens/s | ÷ bare, same grouped batches | ÷ bare, consecutive batches |",
        "|---|---|---|---|",
        f"| bare loop, consecutive batches | {t['consecutive']} | | 1 |",
        f"| bare loop, grouped batches | {t['grouped']} | 1 | |",
        f"| teacher_shard task | {t['task']} | **{v['task_vs_bare_grouped']}** | "
        f"{v['task_vs_bare_consecutive']} |",
        f"| enqueue → last shard on storage | {t['job']} | **{v['job_vs_bare_grouped']}** | "
        f"{v['job_vs_bare_consecutive']} |",
        "",
        "Padding, the share of batch cells that are padding (grouped by length / consecutive):",
        "",
        "| batches of | grouped | consecutive |",
        "|---|---|---|",
        f"| teacher, 16 | **{v['padding']['grouped']:.1%}** | {v['padding']['consecutive']:.1%} |",
        *[
            f"| student replica, {b} | **{g:.1%}** | {c:.1%} |"
            for b, (g, c) in v.get("student_padding", {}).items()
        ],
        "",
    ]


def write_markdown(r: dict[str, Any], path: Path, command: str) -> None:
    e, o, s, c = r["efficiency"], r["overlap"], r["scaling"], r["cache_size"]
    lines = [
        "# distillq benchmarks",
        "",
        f"Made by `{command}` on {r['started']} ({r['machine']['platform']}, torch {r['machine']['torch']}, "
        f"GPU: {r['machine']['gpu'] or 'none'}); the whole run took {r['seconds']} s. Every ratio below was measured "
        "side by side in that one run; absolute times drift on shared machines. Raw numbers: `RESULTS.json`.",
        "",
        "![results](results.png)",
        "",
        "## Efficiency against the bare-loop limit (one torch thread each)",
        "",
        "| stage | distillq tokens/s | bare loop tokens/s | ratio | target |",
        "|---|---|---|---|---|",
        f"| teacher shard task | {e['teacher']['distillq_tokens_per_s']} | {e['teacher']['bare_tokens_per_s']} | **{e['teacher']['ratio']}** | ≥ 0.90 |",
        f"| student replica task | {e['student']['distillq_tokens_per_s']} | {e['student']['bare_tokens_per_s']} | **{e['student']['ratio']}** | ≥ 0.85 |",
        "",
        "## Pipeline overlap",
        "",
        f"Teacher and student workers together: {o['together_s']} s; the stages one after the other: "
        f"{o['teacher_stage_s']} + {o['student_stage_s']} = {o['sequential_sum_s']} s; ratio **{o['ratio']}**. "
        f"The first student step began {o['first_student_step_after_first_shard_s']} s after the first shard landed and "
        f"{o['first_student_step_before_last_shard_s']} s before the last one did.",
        "",
        f"Per-round overhead (dispatch, model build, checkpoint I/O, merge) over {o['rounds']['rounds']} rounds: "
        f"{o['rounds']['round_wall_s']} s from queued to merged vs {o['rounds']['training_s']} s of training: "
        f"**{o['rounds']['overhead_share'] * 100:.1f}%** of round time.",
        "",
        "## Offline (distillq) vs online distillation",
        "",
        f"Cache built once in {r['offline_vs_online']['cache_build_s']} s over {r['offline_vs_online']['train_tokens']} tokens.",
        "",
        "| epochs | distillq s | online s (same loop) | TRL GKDTrainer s | speed-up vs online / vs TRL | distillq held-out | online held-out | TRL held-out |",
        "|---|---|---|---|---|---|---|---|",
        *[
            _online_row(k, v, r.get("trl_gkd", {}).get("epochs", {}).get(k))
            for k, v in sorted(r["offline_vs_online"]["epochs"].items(), key=lambda kv: int(kv[0]))
        ],
        "",
        "## Cache size and fidelity",
        "",
        f"{c['positions']} target positions, vocabulary {c['vocab']}.",
        "",
        "| k | bytes / position | captured mass | KL(full ‖ sparse) |",
        "|---|---|---|---|",
        *[
            f"| {k} | {v['bytes_per_position']} | {v['captured_mass']} | {v['kl_full_vs_sparse']} |"
            for k, v in sorted(c["k"].items(), key=lambda kv: int(kv[0]))
        ],
        f"| full fp16 | {c['full_fp16_bytes_per_position']} (raw {c['full_fp16_raw_bytes_per_position']}) | 1 | 0 |",
        "",
        *quality_section(r.get("quality")),
        *_onpolicy_section(r.get("onpolicy")),
        "## Memory (peak RSS of the stage functions, fresh process each)",
        "",
        "| data | records | teacher MB | student MB |",
        "|---|---|---|---|",
        *[
            f"| {x} | {r['memory'][x]['records']} | {r['memory'][x]['teacher_max_rss_mb']} | {r['memory'][x]['student_max_rss_mb']} |"
            for x in ("1x", "10x")
        ],
        f"| growth | 10× | {r['memory']['teacher_growth_10x']}× | {r['memory']['student_growth_10x']}× |",
        "",
        "## Scaling",
        "",
        f"Teacher throughput with 1 worker process (1 thread): {s['1_workers_tokens_per_s']} tokens/s; with 2: "
        f"{s['2_workers_tokens_per_s']} tokens/s (×{s['speedup']}). No GPU machine was lent to this task: "
        "many-core and GPU figures are not measured.",
        "",
        *_served_section(r.get("served")),
        *_vocab_section(r.get("vocab_memory")),
        *_init_section(r.get("init_student")),
        *_overhead_section(r.get("teacher_overhead")),
        *_teacher_cpu_section(r.get("teacher_cpu")),
        *_generation_vocab_section(r.get("generation_vocab")),
        *_real_model_section(r.get("real_model")),
        *_cross_tokenizer_section(r.get("cross_tokenizer")),
        *_cross_mapping_section(r.get("cross_mapping")),
        *_scale_section(path.parent / "SCALE.json"),
        *_notes(path.parent / "NOTES.md"),
        "",
    ]
    path.write_text("\n".join(lines))


# ---------------------------------------------------------------- quality (bench/quality.py)


def _arm_kind(name: str) -> tuple[str, str]:
    """(family, colour) of an arm for the plots."""
    if name.startswith("top"):
        return "top-k", "C0"
    if name.startswith("sampled"):
        return "sampled", "C3"
    return name, "C2" if name == "dense" else "0.5"


def quality_bars(ax: Any, q: dict[str, Any]) -> None:
    arms = q["arms"]
    names = list(arms)
    means = [arms[n]["share_mean"] for n in names]
    lo = [m - min(arms[n]["share_of_dense_gain"]) for m, n in zip(means, names, strict=True)]
    hi = [max(arms[n]["share_of_dense_gain"]) - m for m, n in zip(means, names, strict=True)]
    ax.bar(names, means, yerr=[lo, hi], color=[_arm_kind(n)[1] for n in names], capsize=3)
    ax.axhline(1.0, color="C2", ls="--", lw=1)
    ax.set(
        ylabel="share of dense KD's gain over CE",
        title=f"KD targets, {q['seeds']} seeds (bars: range; details: quality.png)",
    )
    ax.tick_params(axis="x", labelrotation=45, labelsize=8)


def write_quality_plot(q: dict[str, Any], path: Path) -> None:
    """Pareto: bytes per position against the share of dense KD's gain over CE (range over
    seeds); and ECE per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = q["arms"]
    fig, ax = plt.subplots(1, 2, figsize=(12, 4.8))
    for family in ("top-k", "sampled"):
        names = [n for n in arms if _arm_kind(n)[0] == family]
        xs = [arms[n]["bytes_per_position"] for n in names]
        share = [arms[n]["share_mean"] for n in names]
        err = [
            [s - min(arms[n]["share_of_dense_gain"]) for s, n in zip(share, names, strict=True)],
            [max(arms[n]["share_of_dense_gain"]) - s for s, n in zip(share, names, strict=True)],
        ]
        colour = _arm_kind(names[0])[1]
        ax[0].errorbar(xs, share, yerr=err, fmt="o-", color=colour, capsize=3, label=family)
        for n, x, y in zip(names, xs, share, strict=True):
            label = n.replace("sampled", "N=").replace("top", "k=")
            ax[0].annotate(label, (x, y), textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax[0].axhline(1.0, color="C2", ls="--", lw=1, label="dense KD")
    ax[0].axhline(0.0, color="0.5", ls=":", lw=1, label="CE only")
    ax[0].axvline(40, color="0.7", ls=":", lw=1)
    ax[0].set(
        xscale="log",
        xlabel="cache bytes per target position (compressed file)",
        ylabel="share of dense KD's held-out gain over CE",
        title=f"Pareto: bytes vs quality (bars: range over {q['seeds']} seeds)",
    )
    ax[0].legend(fontsize=8)
    names = list(arms)
    ece = [arms[n]["ece_mean"] for n in names]
    ax[1].bar(
        names,
        ece,
        yerr=[
            [e - min(arms[n]["ece"]) for e, n in zip(ece, names, strict=True)],
            [max(arms[n]["ece"]) - e for e, n in zip(ece, names, strict=True)],
        ],
        color=[_arm_kind(n)[1] for n in names],
        capsize=3,
    )
    ax[1].set(ylabel="ECE (15 bins), held-out", title="calibration by arm (bars: seed range)")
    ax[1].tick_params(axis="x", labelrotation=45, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def paired(a: dict[str, Any], b: dict[str, Any], key: str = "heldout") -> str:
    """a against b seed by seed: lower/higher only where every seed agrees."""
    d = [x - y for x, y in zip(a[key], b[key], strict=True)]
    if all(x < 0 for x in d):
        return "lower on every seed"
    if all(x > 0 for x in d):
        return "higher on every seed"
    return "no difference (the seeds disagree)"


def _range(values: list[float], fmt: str = "{:.4f}") -> str:
    return f"{fmt.format(float(np.mean(values)))} [{fmt.format(min(values))}, {fmt.format(max(values))}]"


def quality_section(q: dict[str, Any] | None) -> list[str]:
    if not q:
        return []
    arms = q["arms"]
    lines = [
        "## Quality: which teacher targets (bench/quality.py)",
        "",
        f"`python -m bench.run --only quality` (part of `make bench`) on "
        f"{q.get('started', '?')} in {q['seconds']} s: the "
        f"demo teacher and student (full fine-tuning), {q['epochs']} epochs at batch "
        f"{q['batch']}, α = {q['alpha']}, equal steps per arm; {q['seeds']} seeds (a seed fixes "
        "the student's initialisation, the batch order and the draws for every arm). Values are "
        "mean [min, max] over the seeds; the share of dense KD's gain is taken seed by seed, "
        "(CE − arm) / (CE − dense), so that the seeds' own spread (CE alone: "
        f"{min(arms['ce_only']['heldout'])} to {max(arms['ce_only']['heldout'])}) does not hide "
        f"the differences between targets. Teacher held-out {q['teacher_heldout']}. Bytes: the "
        "compressed cache file each arm trained from, per target position.",
        "",
        "![quality](quality.png)",
        "",
        "| arm | bytes / position | held-out CE | ECE (15 bins) | confidence − accuracy | share of dense KD's gain |",
        "|---|---|---|---|---|---|",
    ]
    for name, a in arms.items():
        b = a["bytes_per_position"]
        lines.append(
            f"| {name} | {b if b is not None else ''} | {_range(a['heldout'])} | "
            f"{_range(a['ece'])} | {_range(a.get('overconfidence') or [float('nan')])} | "
            f"{_range(a['share_of_dense_gain'], '{:.0%}')} |"
        )
    lines.append("")
    lines += quality_findings(q)
    return lines


def quality_findings(q: dict[str, Any]) -> list[str]:
    """The comparisons the issue asks for, each compared seed by seed."""
    arms = q["arms"]
    out = []
    budget = [n for n in arms if n.startswith("sampled") and arms[n]["bytes_per_position"] <= 40]
    tops = [n for n in arms if n.startswith("top")]
    if budget:
        best = max(budget, key=lambda n: arms[n]["share_mean"])
        a = arms[best]
        out.append(
            f"- **Sampled within 40 B/position**: {best} ({a['bytes_per_position']} B) captures "
            f"{_range(a['share_of_dense_gain'], '{:.0%}')} of dense KD's gain; against dense: "
            f"held-out {paired(a, arms['dense'])}."
        )
        for t in sorted(
            tops, key=lambda n: abs(arms[n]["bytes_per_position"] - a["bytes_per_position"])
        )[:1]:
            b = arms[t]
            out.append(
                f"- **At equal bytes** ({best} {a['bytes_per_position']} B vs {t} "
                f"{b['bytes_per_position']} B): held-out {a['heldout_mean']} vs {b['heldout_mean']}, "
                f"sampled {paired(a, b)}; ECE {a['ece_mean']} vs {b['ece_mean']}, sampled "
                f"{paired(a, b, 'ece')}."
            )
    if tops:
        t = max(tops, key=lambda n: arms[n]["bytes_per_position"])
        out.append(
            f"- **Top-k at its largest** ({t}, {arms[t]['bytes_per_position']} B): "
            f"{_range(arms[t]['share_of_dense_gain'], '{:.0%}')} of dense KD's gain."
        )
    return [*out, ""]


def _teacher_cpu_section(v: dict[str, Any] | None) -> list[str]:
    if not v:
        return []
    rows = [
        f"| {name} | {x['tokens_per_s']} | **{x['vs_float32']}×** | {x['top1']} | {x['max_dlogp']} | "
        f"{x['rss_growth_mib'] if x['rss_growth_mib'] is not None else 'n/a (own process)'} |"
        for name, x in v["paths"].items()
        if "error" not in x
    ] + [
        f"| {name} | failed: {x['error']} | | | | |"
        for name, x in v["paths"].items()
        if "error" in x
    ]
    return [
        "## What each CPU teacher path costs",
        "",
        f"`python -m bench.run --only teacher_cpu`: one Llama of {v['parameters'] / 1e6:.0f}M "
        f"parameters (random weights, V = {v['vocab']:,}), {v['samples']} samples, {v['tokens']:,} "
        f"tokens, top-k 16, batch 8, {v['threads']} threads (the server: 1, its default here); this "
        f"CPU has native bfloat16: {'yes' if v['cpu_bf16'] else 'no'}. Agreement is against "
        "transformers float32: the share of positions with the same top token, and the largest "
        "|Δ log p| of the top entry (the server's over positions 1.., which echo scores, on the "
        "first 12 samples of at most 160 tokens: it failed longer ones here). The server keys "
        "its top entries by text, and a text several ids share is dropped "
        "(`core/teacher/dialects.py`): where the teacher's top token is such a token, the "
        "server's top entry is the next one, hence its largest |Δ log p|.",
        "",
        "| path | tokens/s | ÷ float32 | top-1 agreement | max abs Δ log p | RSS growth, MiB |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"Fastest path at top-1 agreement ≥ 0.98: **{v['fastest']}**, "
        f"**{v['fastest_vs_float32']}×** transformers float32 (goal ≥ 2×).",
        "",
        *_generation_rows(v.get("generation")),
    ]


def _generation_rows(g: dict[str, Any] | None) -> list[str]:
    if not g:
        return []
    paths = [k for k, x in g.items() if isinstance(x, dict)]
    return [
        f"Writing responses (`teacher.generate`): {g['prompts']} prompts, {g['new_tokens']} new "
        "tokens each, greedy, batch 8 (llama.cpp decodes the rows together, one token per row "
        "per step).",
        "",
        "| path | new tokens/s | ÷ float32 | same text as float32 |",
        "|---|---|---|---|",
        *[
            f"| {k} | {g[k]['tokens_per_s']} | **{g[k]['vs_float32']}×** | {g[k]['same_text_as_float32']} |"
            for k in paths
        ],
        "",
    ]


def _generation_vocab_section(v: dict[str, Any] | None) -> list[str]:
    if not v:
        return []
    rows = [
        f"| {int(vocab):,} | {x['head_vs_body']} | {x['bare_tokens_per_s']} | "
        f"{x['stage_tokens_per_s']} | **{x['stage_vs_bare']}** |"
        for vocab, x in v["vocabs"].items()
    ]
    return [
        "## Writing responses at a large vocabulary",
        "",
        f"`python -m bench.run --only generation_vocab`: a {v['shape']} (Gemma-3-270M's shape) "
        f"whose head has V rows; {v['prompts']} prompts of {v['prompt_tokens']} tokens, "
        f"{v['new_tokens']} new tokens each, batch {v['batch']}, sampled at temperature 1, two "
        "threads. The stage (`LocalTeacher.run`, which keeps the top-"
        f"{v['top_k']} of every generated position) against a bare `model.generate` on the same "
        "prompts; best of two each, interleaved. Goal: ≥ 0.9 at 150k–260k.",
        "",
        "| V | head ÷ body parameters | bare new tokens/s | stage new tokens/s | stage ÷ bare |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ]


def _real_model_section(v: dict[str, Any] | None) -> list[str]:
    if not v:
        return []
    t, q = v["throughput"], v["quality"]
    scoring = [
        f"| {name} | {x['tokens_per_s']} | **{x['vs_float32']}×** | {x['top1']} | {x['max_dlogp']} |"
        for name, x in t["scoring"].items()
    ]
    gen = [
        f"| {name} | {x['tokens_per_s']} | **{x['vs_float32']}×** | {x['first']!r} |"
        for name, x in t["generation"].items()
    ]
    seeds = sorted({k.split("-s")[1] for k in q["heldout"]})
    quality = [
        f"| {s} | {q['heldout'][f'kd-s{s}']} | {q['heldout'][f'ce-s{s}']} | "
        f"{q['kd_gap_closed'].get(s, q['kd_gap_closed'].get(int(s), 'n/a'))} |"
        for s in seeds
    ]
    return [
        "## A real teacher: SmolLM2-135M-Instruct",
        "",
        "`python -m bench.run --only real_model` (`bench/real_model.py`). Scoring "
        f"{t['samples']} records of given English ({t['tokens']:,} tokens) at top-16, batch 8, "
        "two threads; agreement against transformers float32 (the dequantized conversion of "
        "the same Q4_1 weights):",
        "",
        "| path | tokens/s | ÷ float32 | top-1 agreement | max abs Δ log p |",
        "|---|---|---|---|---|",
        *scoring,
        "",
        "Writing responses to 8 chat prompts (32 new tokens, greedy):",
        "",
        "| path | new tokens/s | ÷ float32 | first answer |",
        "|---|---|---|---|",
        *gen,
        "",
        f"Quality: the real demo's job on {q['records']} prompts ({q['eval_samples']} held out), "
        f"`kd` and `ce` at three seeds on one cache; teacher held-out {q['teacher_heldout']}, "
        f"untrained student {q['untrained']}. KD beats CE at {q['kd_beats_ce']} of 3 seeds.",
        "",
        "| seed | kd held-out | ce held-out | share of the ce→teacher gap kd closes |",
        "|---|---|---|---|",
        *quality,
        "",
    ]


def _onpolicy_found(v: dict[str, Any], seeds: list[str]) -> str:
    """What the arms say, in words computed from them."""
    arms = v["arms"]

    def gains(arm: str, key: str) -> list[float]:
        return [arms[f"{arm}-s{s}"][key] - arms[f"off-s{s}"][key] for s in seeds]

    def ce(arm: str) -> list[float]:
        return [
            arms[f"{arm}-s{s}"]["heldout_ce"] / arms[f"off-s{s}"]["heldout_ce"] - 1 for s in seeds
        ]

    def said(xs: list[float], pct: bool = False) -> str:
        return " / ".join(f"{x:+.1%}" if pct else f"{x:+.2f}" for x in xs)

    out = (
        f"`on` raises the teacher's log-prob of the student's own text over `off` at every seed "
        f"(greedy {said(gains('on', 'teacher_logprob'))}, sampled "
        f"{said(gains('on', 'teacher_logprob_sampled'))} nats/token) and costs held-out CE "
        f"({said(ce('on'), True)}): reverse KL on its own samples only, it never sees the data's "
        f"continuations. `mixed` keeps CE within {max(ce('mixed')):.1%} of `off` and gains "
        f"{said(gains('mixed', 'teacher_logprob_sampled'))} on sampled text at every seed, but "
        f"its greedy text moves by {said(gains('mixed', 'teacher_logprob'))}: greedy decoding of "
        "a model this small falls into loops, and the greedy measure moves with them."
    )
    before = v.get("before_cache_loss_split")
    if before:
        mixed = [before["arms"][f"mixed-s{s}"]["heldout_ce"] for s in seeds]
        off = [arms[f"off-s{s}"]["heldout_ce"] for s in seeds]
        out += (
            " A first run trained `mixed`'s cache batches with reverse KL too (the track's loss "
            "was reverse KL throughout): its CE was "
            f"{said([m / o - 1 for m, o in zip(mixed, off, strict=True)], True)} over `off`; "
            "since then only the student's own samples take reverse KL."
        )
    return out


def _onpolicy_section(v: dict[str, Any] | None) -> list[str]:
    """bench/onpolicy.py: off-policy, on-policy and mixed arms from one warm student."""
    if not v:
        return []
    seeds = sorted(v["verdict"], key=int)
    arms, toks = v["arms"], v["teacher_tokens"]

    def row(s: str) -> str:
        cells = []
        for arm in ("off", "on", "mixed"):
            a = arms[f"{arm}-s{s}"]
            cells += [a["heldout_ce"], a["teacher_logprob"], a.get("teacher_logprob_sampled", "")]
        d = v["verdict"][s]
        met = "yes" if d["met"] else "**no**"
        return (
            f"| {s} | "
            + " | ".join(str(c) for c in cells)
            + f" | {d['best']} {d['teacher_logprob_gain']:+.4f} | {d['ce_change']:+.1%} | {met} |"
        )

    p, bare, ratio = v["phases"], v["bare"], v["phase_vs_bare"]
    warm = arms["warm"]
    met = sum(1 for s in seeds if v["verdict"][s]["met"])
    tokens = ", ".join(f"{a} {toks[f'{a}-s0']:,}" for a in ("off", "on", "mixed"))
    return [
        "## Quality: on-policy against off-policy (bench/onpolicy.py)",
        "",
        "`python -m bench.run --only onpolicy`. The demo teacher and student: the student is first "
        f"distilled off-policy from random init on {v['warm_records']} records (the warm start, "
        f"forward KL), then three arms continue it on {v['records']} other records "
        f"({v['eval_samples']} held out), one job, the same rounds, epochs and batches, three "
        "seeds: `off` (the cache, forward KL, α = 0.1), `on` (`on_policy.fraction: 1.0`, "
        "reverse KL on its own samples) and `mixed` (0.5). Two measures: held-out CE on the "
        "data (nats/token), and the teacher's mean log-prob per token of the student's own "
        f"greedy continuations ({v['new_tokens']} tokens) of every held-out prompt (teacher run "
        "densely; higher is better). Goal: `on` or `mixed` beats `off` on the second at every "
        "seed, no more than 5% worse on the first.",
        "",
        "`greedy`: the teacher's log-prob per token of the greedy continuations (the goal's "
        "measure); `sampled`: the same of 4 continuations per prompt at T = 1, seeded per prompt "
        "(a second view: greedy text of a small model falls into loops, and one loop moves the "
        "mean).",
        "",
        f"Warm start: held-out CE {warm['heldout_ce']}, teacher log-prob {warm['teacher_logprob']}"
        f" greedy, {warm.get('teacher_logprob_sampled', 'n/a')} sampled (the teacher's own "
        f"held-out CE {v['teacher_heldout']:.4f}).",
        "",
        "| seed | off CE | off greedy | off sampled | on CE | on greedy | on sampled | mixed CE "
        "| mixed greedy | mixed sampled | best of on/mixed vs off (greedy) | its CE change | "
        "goal met |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *[row(s) for s in seeds],
        "",
        f"Goal met at {met} of {len(seeds)} seeds. " + _onpolicy_found(v, seeds),
        "",
        "Teacher compute, as tokens the teacher ran "
        f"over for a seed's arm: {tokens} (the cache is one pass shared by every arm; an "
        "on-policy arm's own samples are scored once per round).",
        "",
        "Phases of one on-policy round (a job of that one track alone, one replica, round 0): "
        f"sample {p['sample_s']} s ({p['samples']} samples, {p['sampled_tokens']} tokens), "
        f"score {p['score_s']} s, train {p['train_s']} s ({p['train_steps']} steps). Against "
        f"bare loops in this process (a bare `generate` per prompt {bare['generate_s']} s, a bare "
        f"teacher forward + top-k over the same samples {bare['teacher_forward_s']} s, bare "
        f"training steps over the same batches {bare['train_steps_s']} s): sample "
        f"**{ratio['sample']}×**, score **{ratio['score']}×**, train **{ratio['train']}×** the "
        f"bare time. The round's wall (first sample to merge) is "
        f"**{p['round_wall_vs_phase_sum']}×** the sum of its phases: the rest is the hand-offs "
        "between queues (each phase a task: dispatch, model load, files).",
        "",
        *_chunked_line(v.get("phases_chunked")),
    ]


def _chunked_line(c: dict[str, Any] | None) -> list[str]:
    if not c:
        return []
    return [
        f"The same round in `chunks: {c['parts']}` (pieces are tasks of their own: the bench "
        "cluster's two workers both take student work, so pieces are sampled two at a time, "
        "and the teacher worker scores a piece while the other samples the next): phases "
        f"summed over the pieces sample {c['sample_s']} s, score {c['score_s']} s, train "
        f"{c['train_s']} s ({c['train_steps']} steps: batches do not cross pieces); the "
        f"round's wall {c['round_wall_s']} s, **{c['round_wall_vs_phase_sum']}×** their sum.",
        "",
    ]


def _cross_tokenizer_section(v: dict[str, Any] | None) -> list[str]:
    if not v:
        return []
    seeds = sorted(v["gains"], key=int)
    bpb = v["heldout_bpb"]
    seq = all(f"cross-seq-s{s}" in bpb for s in seeds)

    def row(s: str) -> str:
        g = v["gains"][s]
        cells = [bpb[f"{a}-s{s}"] for a in ("same-kd", "same-ce", "cross-kd", "cross-ce")]
        cells += [bpb[f"cross-seq-s{s}"]] if seq else []
        cells += [g["same"], g["cross"]] + ([g["sequence_level"]] if seq else [])
        return f"| {s} | " + " | ".join(str(c) for c in cells) + f" | **{g['ratio']}** |"

    a = v["alignment"]
    n = max(1, sum(a.values()))
    bpp, speed = v["bytes_per_position"], v["replica_tokens_per_s"]
    met = sum(1 for s in seeds if (v["gains"][s]["ratio"] or 0) >= v["goal"])
    pooled = sum(v["gains"][s]["cross"] for s in seeds) / max(
        1e-9, sum(v["gains"][s]["same"] for s in seeds)
    )
    verdict = (
        f"met at {met} of {len(seeds)} seeds, {pooled:.2f} pooled over the seeds (Σ cross gain "
        "÷ Σ same gain); the same-tokenizer gain itself moves 0.03–0.05 between seeds, so one "
        "seed's ratio is noisy"
    )
    head = ["seed", "same kd", "same ce", "cross kd", "cross ce"]
    head += ["cross seq"] if seq else []
    head += ["same gain", "cross gain"] + (["seq gain"] if seq else []) + ["ratio"]
    teacher = v.get("teacher_heldout_bpb")
    return [
        "## Across tokenizers",
        "",
        "`python -m bench.run --only cross_tokenizer` (`bench/cross_tokenizer.py`). SmolLM2-135M-"
        f"Instruct scores {v['records']} records of the stdlib's sources ({v['eval_samples']} held "
        "out) once; four arms train from random init, one shape, at three seeds on that cache: "
        "`same` on SmolLM2's tokenizer (49,152, byte-level BPE), `cross` on Phi-3's (32,064, "
        f"SentencePiece; llama.cpp's vocab file), {v.get('epochs', 6)} epochs, each as KD (α = "
        f"{v.get('alpha', 0.5)}) and CE only"
        + (
            "; `cross seq` (sequence-level KD) is a Phi-3 student trained with CE on what the "
            "teacher wrote after each record's first half (a second job, `teacher.generate`), "
            "measured on the same held-out text"
            if seq
            else ""
        )
        + ". Held-out bits per byte (the report's `eval_bpb`), so the tokenizers compare; the "
        "ratio is cross-KD's gain over cross-CE ÷ same-KD's gain over same-CE. "
        f"Goal ≥ {v['goal']}: {verdict}"
        + (f"; the teacher itself: {teacher} bits per byte." if teacher else "."),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *[row(s) for s in seeds],
        "",
        f"Alignment of the cross track's positions: {a['exact'] / n:.1%} exact, "
        f"{a['chain'] / n:.1%} chain rule, {a['split'] / n:.1%} prefix mass, "
        f"{a['none'] / n:.1%} CE only. Bytes per position: teacher cache "
        f"{bpp['teacher_cache']}, the aligned copy {bpp['aligned_copy']} (once per student "
        f"tokenizer). Replica tokens/s (mean of seeds): "
        + ", ".join(f"{k} {x}" for k, x in speed.items())
        + f". Mapping a shard once takes {v['map_shard_s_vs_teacher_shard_s']}× the teacher's "
        "time on it.",
        "",
        *(
            [
                "Sequence-level KD lost to CE here at every seed: its students see only what "
                "the teacher wrote after each record's first half (sampled at temperature 0.7 "
                "by a 135M model), never the real second halves the held-out text is like; "
                "logit-level KD trains on the real text and the teacher's distribution over it.",
                "",
            ]
            if seq
            else []
        ),
        *_before_fix_line(v.get("before_fallback_fix")),
        *_prefix_run_line(v.get("prefix_mapping_run")),
    ]


def _prefix_run_line(x: dict[str, Any] | None) -> list[str]:
    """The same bench with the fix but the first-piece mapping (before exact match was chosen)."""
    if not x:
        return []
    return [
        f"With the fix and the first-piece mapping ({x['started']}; exact match was chosen "
        "after it, below): cross-KD's gain over cross-CE "
        + ", ".join(f"{g:+.4f}" for g in x["cross_gains"])
        + ", same-KD's "
        + ", ".join(f"{g:+.4f}" for g in x["same_gains"])
        + ", ratios "
        + ", ".join(f"{r}" for r in x["ratios"])
        + ".",
        "",
    ]


def _before_fix_line(x: dict[str, Any] | None) -> list[str]:
    """The runs before the mapping named the piece a SentencePiece student writes (it named
    the piece's <0xNN> byte-fallback twin, which the student never writes)."""
    if not x:
        return []
    return [
        f"Before the fix ({x['fixed_in']}): the mapping sent '.', ',', ' ', '(' and every other "
        "single-byte teacher token to the student's byte-fallback twin (`<0x2E>`…), a token "
        "a SentencePiece tokenizer never writes where a piece spells the byte; cross-KD's gain "
        "over cross-CE was "
        + ", ".join(f"{g:+.4f}" for g in x["cross_gains"])
        + f" bits per byte at the three seeds ({x['started']}), and the same with exact-match "
        "mapping only.",
        "",
    ]


def _cross_mapping_section(v: dict[str, Any] | None) -> list[str]:
    """bench/cross_mapping.py: which vocabulary mapping, in one process."""
    if not v:
        return []
    bpb, ratios = v["heldout_bpb"], v["ratio_of_same_tokenizer_gain"]
    seeds = sorted({k.rsplit("-s", 1)[1] for k in bpb}, key=int)
    arms = ["same-ce", "same-kd", "cross-ce", "prefix", "exact", "exact+uld"]
    rows = [
        f"| {s} | "
        + " | ".join(str(bpb[f"{a}-s{s}"]) for a in arms)
        + " | "
        + " | ".join(str(ratios[m][i]) for m in ("prefix", "exact", "exact+uld"))
        + " |"
        for i, s in enumerate(seeds)
    ]
    mean = {m: sum(r for r in rs if r is not None) / len(rs) for m, rs in ratios.items()}
    return [
        "### Which vocabulary mapping (bench/cross_mapping.py)",
        "",
        "`python -m bench.cross_mapping` (or `python -m bench.run --only cross_mapping`): the "
        "same teacher, data and student shapes in one process (no queues), so the arms differ "
        "only in how the teacher's top-16 reaches Phi-3's vocabulary: `prefix` (each teacher "
        "token's mass to the student token its text starts with: the product's mapping until "
        "this bench), `exact` (only tokens the student has whole; the rest stays in the tail "
        "bucket: GOLD's exact-match part, the product's mapping now), `exact+uld` (plus ULD, the L1 distance between the sorted "
        "top-k probabilities, weight 1, at exactly aligned positions). Held-out bits per byte; "
        "the last three columns are each mapping's gain over cross-CE ÷ same-KD's gain over "
        "same-CE.",
        "",
        "| seed | same ce | same kd | cross ce | prefix | exact | exact+uld | prefix ratio | "
        "exact ratio | exact+uld ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Mean ratio: " + ", ".join(f"{m} {x:.2f}" for m, x in mean.items()) + ".",
        "",
    ]


def _scale_section(path: Path) -> list[str]:
    """The summary of bench/scale.py's own run (its file: SCALE.md), against the goals."""
    if not path.exists():
        return []
    v = json.loads(path.read_text())
    enq = {x["records"]: x for x in v.get("enqueue", [])}
    st = {(x["shards"], x["tracks"]): x for x in v.get("status", [])}
    before = {(x["shards"], x["tracks"]): x for x in v.get("status_before", [])}
    big, big0 = v.get("big_job", {}), v.get("big_job_before", {})
    redis = [x for x in v.get("redis", []) if "job" in x]
    lines = ["## Scale: distillq's own cost as the work grows (bench/scale.py)", ""]
    lines.append(
        f"`{v.get('command', 'python -m bench.scale')}` and earlier parts; every table, the plot "
        "and the before/after runs: [`SCALE.md`](SCALE.md)."
    )
    lines.append("")
    if 100000 in enq:
        e = enq[100000]
        lines.append(
            f"- enqueue of 100k records into {e['shards']} shards: {e['enqueue_s']} s (goal < 60 s), "
            f"peak RSS {e['peak_rss_mib']} MiB; "
            + ", ".join(f"{k:,} records {x['enqueue_s']} s" for k, x in enq.items())
            + " (linear: one tokenizer call per record measures its length)."
        )
    if (1000, 1) in st:
        a, b = st[(1000, 1)], before.get((1000, 1), {})
        lines.append(
            f"- `status` of a 1,000-shard job: {a['status_s']} s as a process (goal < 1 s), its "
            f"own work {a['frame_s']} s in-process"
            + (f" (before libyaml read job.yaml: {b['frame_s']} s)" if b else "")
            + f"; at 5,000 shards and 16 tracks {st.get((5000, 16), {}).get('frame_s')} s. A "
            f"10-shard job's `status` took {st.get((10, 1), {}).get('status_s')} s in the same "
            "run: the goal is missed by the process's start and imports on this busy machine "
            "(bench/CLI.md: 0.5 s idle), not by the shards."
        )
    if redis:
        lines.append(
            "- Redis keys before / at the end of / after `finished_expires` of each small job: "
            + "; ".join(
                f"{x['keys_before']} / {x['keys_after']} / {x['keys_expired']}" for x in redis
            )
            + " (a finished job's keys and results go within `finished_expires`, 1 h by default, "
            "5 s in this bench; the few left are fired chords' markers, which Celery expires "
            "300 s after each chord fires)."
        )
    if big:
        lines.append(
            f"- a {big['shards']}-shard job on two workers: {big['wall_s']} s"
            + (f" ({big0['wall_s']} s before the fixes)" if big0 else "")
            + "; merge → next round queued, median of the first and last tenth of rounds: "
            f"{big['merged_to_next_queued_s'][0]} → {big['merged_to_next_queued_s'][1]} s"
            + (
                f" (before: {big0['merged_to_next_queued_s'][0]} → "
                f"{big0['merged_to_next_queued_s'][1]} s)"
                if big0
                else ""
            )
            + ". What still grows is the checkpoint's meta.json, which keeps every round's "
            "record (about 800 bytes a round) and is written and read at each merge."
        )
    if rounds := v.get("rounds"):
        lines.append(
            "- merge → next round queued against tracks × replicas (24-shard jobs): "
            + ", ".join(
                f"{x['tracks']}×{x['replicas']} {x['merged_to_next_queued_s']} s" for x in rounds
            )
            + " (flat; the other two gaps grow with the tasks queued at once on two workers)."
        )
    return [*lines, ""]
