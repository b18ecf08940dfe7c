"""`make bench`: every claim as a number measured side by side in one run on this machine.

    python -m bench.run [--out bench] [--quick]

Writes bench/RESULTS.json, bench/RESULTS.md and bench/results.png. Ratios are what to
compare across machines; absolute times drift on shared machines.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench import (
    cache_size,
    cross_mapping,
    cross_tokenizer,
    efficiency,
    generation_vocab,
    init_student,
    memory,
    online,
    onpolicy,
    pipeline,
    quality,
    real_model,
    served,
    teacher_cpu,
    teacher_overhead,
    vocab_memory,
)
from bench.cluster import cluster
from bench.report import write_markdown, write_plot


def run_only(out: Path, name: str) -> dict[str, Any]:
    """Re-measure one section into the committed RESULTS.json (the rest kept as measured)."""
    results = json.loads((out / "RESULTS.json").read_text())
    steps = {
        "served": lambda root: served.measure(root),
        "vocab_memory": lambda root: vocab_memory.measure(),
        "init_student": lambda root: init_student.measure(root),
        "teacher_overhead": lambda root: teacher_overhead.measure(root),
        "quality": lambda root: quality.measure(root),
        "teacher_cpu": lambda root: teacher_cpu.measure(root),
        "generation_vocab": lambda root: generation_vocab.measure(root),
        "real_model": lambda root: real_model.measure(root),
        "cross_tokenizer": lambda root: cross_tokenizer.measure(root),
        "cross_mapping": lambda root: cross_mapping.measure(),
        "onpolicy": lambda root: onpolicy.measure(root),
        "efficiency": lambda root: _efficiency(root),
    }
    if name not in steps:
        raise SystemExit(f"--only {name}: choose one of {', '.join(steps)}")
    with tempfile.TemporaryDirectory(prefix="distillq-bench-") as tmp:
        t = time.time()
        results[name] = steps[name](Path(tmp))
        results[name]["seconds"] = round(time.time() - t)
        results[name]["started"] = time.strftime("%Y-%m-%d %H:%M:%S")
    (out / "RESULTS.json").write_text(json.dumps(results, indent=2) + "\n")
    write_plot(results, out / "results.png")
    write_markdown(results, out / "RESULTS.md", command="make bench")
    return results


def run(out: Path, quick: bool) -> dict[str, Any]:
    scale = 0.5 if quick else 1.0
    n = lambda x: max(40, int(x * scale))  # noqa: E731
    results: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "cpus": torch.get_num_threads(),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    with tempfile.TemporaryDirectory(prefix="distillq-bench-") as tmp:
        root = Path(tmp)
        t0 = time.time()

        def step(name: str, fn: Any) -> None:
            t = time.time()
            print(f"[{time.time() - t0:6.0f}s] {name} ...", flush=True)
            results[name] = fn()
            print(
                f"         {name}: {json.dumps(results[name])[:300]} ({time.time() - t:.0f}s)",
                flush=True,
            )

        step("cache_size", lambda: cache_size.measure(root, n(200)))
        with cluster(root / "cluster") as c:
            step("efficiency", lambda: efficiency.measure(root, c, n(480), repeats=5))
            step("overlap", lambda: pipeline.overlap(root, c, n(480)))
            step("scaling", lambda: pipeline.scaling(root, c, n(480)))
        step("offline_vs_online", lambda: online.offline_vs_online(root, n(320)))
        step("trl_gkd", lambda: trl_column(root, n(320)))
        step("quality", lambda: quality.measure(root, n(480)))
        step("memory", lambda: memory.measure(root, n(100)))
        step("served", lambda: served.measure(root))
        step("vocab_memory", vocab_memory.measure)
        step("init_student", lambda: init_student.measure(root))
        step("teacher_overhead", lambda: teacher_overhead.measure(root))
        step("teacher_cpu", lambda: teacher_cpu.measure(root))
        step("generation_vocab", lambda: generation_vocab.measure(root))
        step("real_model", lambda: real_model.measure(root))
        step("cross_tokenizer", lambda: cross_tokenizer.measure(root))
        step("cross_mapping", cross_mapping.measure)
        step("onpolicy", lambda: onpolicy.measure(root))
        results["seconds"] = round(time.time() - t0)
    out.mkdir(parents=True, exist_ok=True)
    (out / "RESULTS.json").write_text(json.dumps(results, indent=2) + "\n")
    write_plot(results, out / "results.png")
    write_markdown(
        results, out / "RESULTS.md", command="make bench" + (" BENCH_ARGS=--quick" if quick else "")
    )
    return results


def _efficiency(root: Path) -> dict[str, Any]:
    with cluster(root / "cluster") as c:
        return efficiency.measure(root, c, 480, repeats=5)


def trl_column(root: Path, records: int) -> dict[str, Any]:
    try:
        from bench import trl_gkd

        return trl_gkd.measure(root, records)
    except Exception as e:  # an optional column: report why, keep every other number
        return {"error": f"{type(e).__name__}: {e}"[:300]}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.run")
    p.add_argument("--out", type=Path, default=Path(__file__).parent)
    p.add_argument("--quick", action="store_true", help="half-size inputs (a smoke run)")
    p.add_argument(
        "--only",
        help="re-measure one section (served, vocab_memory, init_student, teacher_overhead, "
        "quality) into "
        "the existing results",
    )
    args = p.parse_args()
    if args.only:
        run_only(args.out, args.only)
    else:
        run(args.out, args.quick)


if __name__ == "__main__":
    main()
