"""How long each `distillq` command takes to answer, in a fresh interpreter every time.

    python -m bench.cli_latency [--repeats 5] [--out bench]

Writes bench/CLI.md and bench/CLI.json. Each command runs ``repeats`` times as a subprocess
against an embedded Redis and a real job (tiny Llamas, the demo tokenizer); the table shows
the median and the fastest run. ``enqueue`` runs on a 10-record dataset (the fixed cost) and
on a 300-record one (fixed cost + the dataset scan), so the scan is measured apart. The
``python -c pass`` row is the interpreter's own floor. Absolute times drift on a shared
machine; compare rows of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from distillq.app.demo_models import TEACHER_ASSET, TinyLlama, llama, write_demo_dataset
from distillq.workers.redis_server import EmbeddedRedis

GOALS = {"status": 1.0, "watch (first frame)": 1.0, "nodes": 1.0, "jobs": 1.0}


def _models(root: Path) -> dict[str, str]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TEACHER_ASSET)
    out = {}
    for name, shape, seed in (
        ("teacher", TinyLlama(64, 2, 4, 128, 256), 0),
        ("student", TinyLlama(32, 1, 2, 64, 256), 1),
    ):
        llama(shape, len(tok), tok.eos_token_id, seed).save_pretrained(root / name)
        tok.save_pretrained(root / name)
        out[name] = str(root / name)
    return out


def _spec(root: Path, models: dict[str, str], records: int) -> Path:
    data = write_demo_dataset(root / f"data-{records}.jsonl", max_records=records)
    spec = {
        "name": "cli",
        "dataset": str(data),
        "shards": 2,
        "teacher": {"model": models["teacher"], "top_k": 8, "max_length": 128},
        "students": [{"name": "s", "model": models["student"], "peft": {"method": "lora"}}],
    }
    path = root / f"job-{records}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _time(
    argv: list[str], env: dict[str, str], repeats: int, cwd: Path | None = None
) -> dict[str, Any]:
    runs, out = [], ""
    for _ in range(repeats):
        t = time.perf_counter()
        res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, cwd=cwd)
        runs.append(time.perf_counter() - t)
        out = res.stdout
        if res.returncode not in (0, 3):  # 3: watch/wait timed out, as asked
            raise RuntimeError(f"{argv} failed ({res.returncode}): {res.stderr[-2000:]}")
    return {"median_s": round(statistics.median(runs), 3), "min_s": round(min(runs), 3), "out": out}


def measure(root: Path, repeats: int, before: Path | None = None) -> dict[str, Any]:
    models = _models(root)
    small, full = _spec(root, models, 10), _spec(root, models, 300)
    with EmbeddedRedis(root / "redis") as redis:
        env = {
            **os.environ,
            "DISTILLQ_BROKER_URL": redis.url,
            "DISTILLQ_STORAGE": str(root / "storage"),
        }
        cli = [sys.executable, "-m", "distillq"]
        rows: dict[str, dict[str, Any]] = {}
        rows["python -c pass"] = _time([sys.executable, "-c", "pass"], env, repeats)
        # What enqueue cannot avoid: a tokenizer comes through transformers, which loads torch.
        floor = "import torch; from transformers import AutoTokenizer, PreTrainedConfig"
        rows["import torch + transformers"] = _time([sys.executable, "-c", floor], env, repeats)
        rows["enqueue (10 records)"] = _time([*cli, "enqueue", str(small)], env, repeats)
        rows["enqueue (300 records)"] = _time([*cli, "enqueue", str(full)], env, repeats)
        job = rows["enqueue (300 records)"]["out"].strip().splitlines()[-1]
        rows["--help"] = _time([*cli, "--help"], env, repeats)
        rows["jobs"] = _time([*cli, "jobs"], env, repeats)
        rows["nodes"] = _time([*cli, "nodes"], env, repeats)
        rows["status"] = _time([*cli, "status", job], env, repeats)
        rows["watch (first frame)"] = _time([*cli, "watch", job, "--timeout", "0"], env, repeats)
        if before is not None:
            # The same commands from another checkout (the tree before a change), same run;
            # run from inside it, or `python -m` would find this tree's packages first.
            old = {**env, "PYTHONPATH": str(before)}
            # A tree from before the distillq namespace has its CLI at app/cli.py.
            main = "distillq" if (before / "distillq" / "__main__.py").exists() else "app.cli"
            was = [sys.executable, "-m", main]
            rows["before: enqueue (10 records)"] = _time(
                [*was, "enqueue", str(small)], old, repeats, before
            )
            for name in ("--help", "jobs", "nodes"):
                rows[f"before: {name}"] = _time([*was, name], old, repeats, before)
            rows["before: status"] = _time([*was, "status", job], old, repeats, before)
            rows["before: watch (first frame)"] = _time(
                [*was, "watch", job, "--timeout", "0"], old, repeats, before
            )
    for r in rows.values():
        r.pop("out")
    scan = rows["enqueue (300 records)"]["median_s"] - rows["enqueue (10 records)"]["median_s"]
    return {
        "rows": rows,
        "enqueue_over_floor_s": round(
            rows["enqueue (10 records)"]["median_s"]
            - rows["import torch + transformers"]["median_s"],
            3,
        ),
        "enqueue_fixed_s": rows["enqueue (10 records)"]["median_s"],
        "scan_300_records_s": round(scan, 3),
        "repeats": repeats,
    }


def write(out: Path, results: dict[str, Any]) -> None:
    (out / "CLI.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# CLI latency",
        "",
        f"`make bench-cli` (`python -m bench.cli_latency --repeats {results['repeats']}"
        + (" --before <tree>" if results.get("before") else "")
        + "`), "
        f"{results['when']}, on {results['machine']}. Fresh interpreter per run; "
        "median and fastest of the runs. Compare rows, not machines."
        + (
            f" `before:` rows ran the tree at `{results['before']}` in the same run."
            if results.get("before")
            else ""
        ),
        "",
        "| command | median s | fastest s | goal |",
        "|---|---:|---:|---|",
    ]
    for name, r in results["rows"].items():
        goal = GOALS.get(name)
        mark = "" if goal is None else f"≤ {goal} s " + ("✓" if r["median_s"] <= goal else "✗")
        if name.startswith("enqueue (10"):
            mark = "≤ 4 s (fixed cost) " + ("✓" if r["median_s"] <= 4 else "✗")
        lines.append(f"| `{name}` | {r['median_s']:.2f} | {r['min_s']:.2f} | {mark} |")
    lines += [
        "",
        f"The dataset scan of 300 records (enqueue 300 − enqueue 10): {results['scan_300_records_s']:.2f} s.",
        f"enqueue's own work over the import floor (enqueue 10 − imports): {results['enqueue_over_floor_s']:.2f} s.",
        "",
    ]
    (out / "CLI.md").write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent)
    ap.add_argument(
        "--before", type=Path, help="a checkout of an earlier tree, measured in the same run"
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="distillq-cli-") as tmp:
        results = measure(Path(tmp), args.repeats, args.before)
    results["before"] = str(args.before) if args.before else None
    results["when"] = time.strftime("%Y-%m-%d %H:%M")
    results["machine"] = f"{os.cpu_count()} cores, {sys.platform}"
    write(args.out, results)
    print((args.out / "CLI.md").read_text())


if __name__ == "__main__":
    main()
