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

from bench import cache_size, efficiency, memory, online, pipeline
from bench.cluster import cluster
from bench.report import write_markdown, write_plot


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
        step("topk_quality", lambda: online.topk_quality(root, n(320)))
        step("memory", lambda: memory.measure(root, n(100)))
        results["seconds"] = round(time.time() - t0)
    out.mkdir(parents=True, exist_ok=True)
    (out / "RESULTS.json").write_text(json.dumps(results, indent=2) + "\n")
    write_plot(results, out / "results.png")
    write_markdown(
        results, out / "RESULTS.md", command="make bench" + (" BENCH_ARGS=--quick" if quick else "")
    )
    return results


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
    args = p.parse_args()
    run(args.out, args.quick)


if __name__ == "__main__":
    main()
