"""How distillq's own cost grows with the work: records, shards, tracks, jobs (issue 29).

    python -m bench.scale [--records 1000,10000,100000] [--shards 10,100,1000,5000]
                          [--tracks 1,4,16] [--jobs 3] [--out bench]

Tiny models (the demo's), so what is measured is the framework, not the models:

- **enqueue**: `distillq enqueue` (a process, as a user runs it) of N short records into
  N/100 shards, against a Redis with no workers: wall time and peak RSS;
- **status**: `distillq status`, `distillq jobs` and `watch`'s first frame (``job_status``
  in-process, without the interpreter's start) on jobs of S shards (half of them done) and
  T tracks;
- **Redis**: keys and memory before, at the peak of, and after real small jobs run back to
  back on two workers; what is left after each job must not grow without bound.

Writes bench/SCALE.{json,md} and bench/scale.png.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

from distillq.core.control.status import job_status
from distillq.core.job.jobs import load_job
from distillq.core.runtime import broker
from distillq.core.runtime.settings import Settings
from distillq.storage import records
from distillq.storage.records import ShardStats
from distillq.workers.redis_server import EmbeddedRedis


def run(s: Settings, *args: str) -> tuple[float, float, subprocess.CompletedProcess[str]]:
    """(seconds, peak RSS MiB, result) of `distillq ARGS` as its own process."""
    env = {**os.environ, **s.to_env()}
    t = time.perf_counter()
    p = psutil.Popen(
        [sys.executable, "-m", "distillq", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            try:
                peak = max(peak, p.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    out, err = p.communicate()
    wall = time.perf_counter() - t
    done.set()
    res = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    if p.returncode != 0:
        raise SystemExit(f"distillq {' '.join(args)} failed: {err.strip()[-500:]}")
    return wall, peak / 2**20, res


def spec_for(root: Path, base: dict[str, Any], n: int, shards: int, tracks: int) -> Path:
    data = root / f"data-{n}.jsonl"
    if not data.exists():
        with data.open("w") as f:
            for i in range(n):
                f.write(json.dumps({"text": f"def f{i}(x):\n    return x + {i % 97}\n"}) + "\n")
    student = base["students"][0]
    spec = {
        **base,
        "name": f"scale-{n}-{shards}-{tracks}",
        "dataset": str(data),
        "shards": shards,
        "students": [{**student, "name": f"s{t}"} for t in range(tracks)],
    }
    path = root / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def half_done(s: Settings, job_id: str) -> None:
    """Mark every other shard done, as a job half way through its teacher stage."""
    job = load_job(s.storage, job_id)
    now = time.time()
    for i in range(0, job.n_shards, 2):
        records.write(
            job.paths.shard_stats(i),
            ShardStats(i, 10, 200, 200, 1.0, 200.0, now - 1, now, sha256="0" * 64, bytes=1),
        )


def measure_enqueue(root: Path, s: Settings, base: dict[str, Any], sizes: list[int]) -> list[dict]:
    rows = []
    for n in sizes:
        shards = max(10, n // 100)
        wall, rss, res = run(s, "enqueue", str(spec_for(root, base, n, shards, 1)))
        rows.append(
            {
                "records": n,
                "shards": shards,
                "enqueue_s": round(wall, 2),
                "peak_rss_mib": round(rss),
                "job": res.stdout.strip().splitlines()[-1],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def measure_status(
    root: Path, s: Settings, base: dict[str, Any], shard_counts: list[int], tracks: list[int]
) -> list[dict]:
    rows = []
    for shards in shard_counts:
        for t in tracks:
            n = shards * 20
            _, _, res = run(s, "enqueue", str(spec_for(root, base, n, shards, t)))
            job_id = res.stdout.strip().splitlines()[-1]
            half_done(s, job_id)
            status_s, _, _ = run(s, "status", job_id)
            jobs_s, _, _ = run(s, "jobs")
            job = load_job(s.storage, job_id)
            t0 = time.perf_counter()
            job_status(job)  # watch's first frame without the interpreter's start
            frame = time.perf_counter() - t0
            rows.append(
                {
                    "shards": shards,
                    "tracks": t,
                    "status_s": round(status_s, 2),
                    "jobs_s": round(jobs_s, 2),
                    "frame_s": round(frame, 3),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def redis_numbers(r: Any) -> tuple[int, int]:
    return int(r.dbsize()), int(r.info("memory")["used_memory"])


def measure_redis(c: Any, jobs: int) -> list[dict]:
    """Real small jobs back to back on the cluster's two workers: Redis keys and memory
    before, at the peak of, at the end of each job, and once its keys' finished_expires ran
    out (the cluster runs with 5 s instead of an hour)."""
    from distillq.app.demo import prepare

    rows: list[dict[str, Any]] = []
    r = broker.client(c.settings.broker_url, c.settings.sentinel_master)
    base = prepare(c.settings.storage, 96)
    base["shards"] = 6
    base["students"] = [{**base["students"][0], "epochs": 1, "batch_size": 8}]
    for j in range(jobs):
        keys0, mem0 = redis_numbers(r)
        job = c.job({**base, "name": f"redis-{j}"})
        c.submit(job)
        peak_keys, peak_mem = keys0, mem0
        while not job.paths.report.exists():
            k, m = redis_numbers(r)
            peak_keys, peak_mem = max(peak_keys, k), max(peak_mem, m)
            time.sleep(0.2)
        time.sleep(2)  # the last acks and heartbeats settle
        keys1, mem1 = redis_numbers(r)
        time.sleep(c.settings.finished_expires + 2)
        keys2, mem2 = redis_numbers(r)
        rows.append(
            {
                "job": j + 1,
                "keys_before": keys0,
                "keys_peak": peak_keys,
                "keys_after": keys1,
                "keys_expired": keys2,
                "mem_before_kib": mem0 // 1024,
                "mem_peak_kib": peak_mem // 1024,
                "mem_after_kib": mem1 // 1024,
                "mem_expired_kib": mem2 // 1024,
                "shards": 6,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    prefixes: dict[str, int] = {}
    for key in r.scan_iter(count=1000):
        head = key.decode().split(":")[0].split("-")[0]
        prefixes[head] = prefixes.get(head, 0) + 1
    rows.append({"left_by_prefix": prefixes})
    return rows


def round_overheads(rounds: list[Any]) -> tuple[list[float], list[float], list[float]]:
    """Per round: chord queued -> its first replica starts; last replica done -> merged;
    merged -> the next round queued (the scheduler's own time, not the training's)."""
    to_start = [min(x.started_at for x in r.replicas) - r.queued_at for r in rounds if r.queued_at]
    to_merge = [r.merged_at - max(x.finished_at for x in r.replicas) for r in rounds]
    to_next = [
        max(0.0, b.queued_at - a.merged_at) for a, b in itertools.pairwise(rounds) if b.queued_at
    ]
    return to_start, to_merge, to_next


def measure_rounds(c: Any, root: Path, shapes: list[tuple[int, int]]) -> list[dict[str, Any]]:
    """Jobs of 24 shards with T tracks of R replicas each: the scheduler's per-round overhead
    (medians over every round of every track) against tracks and replicas."""
    import statistics

    from distillq.app.demo import prepare
    from distillq.storage import checkpoints

    base = prepare(c.settings.storage, 16)
    data = root / "rounds.jsonl"
    with data.open("w") as f:
        for i in range(24 * 8):
            f.write(json.dumps({"text": f"def h{i}(z):\n    return z - {i % 83}\n"}) + "\n")
    rows = []
    for tracks, replicas in shapes:
        student = {**base["students"][0], "epochs": 1, "batch_size": 4, "replicas": replicas}
        students = [{**student, "name": f"t{i}"} for i in range(tracks)]
        job = c.job(
            {
                **base,
                "name": f"rounds-{tracks}x{replicas}",
                "dataset": str(data),
                "shards": 24,
                "students": students,
            }
        )
        c.submit(job)
        wall = c.wait_done(job, timeout=3600)
        parts: tuple[list[float], ...] = ([], [], [])
        for t in students:
            latest = checkpoints.latest(job.paths, t["name"])
            assert latest is not None
            for acc, xs in zip(parts, round_overheads(latest.meta.rounds), strict=True):
                acc.extend(xs)
        rows.append(
            {
                "tracks": tracks,
                "replicas": replicas,
                "wall_s": round(wall, 1),
                **{
                    name: round(statistics.median(xs), 3)
                    for name, xs in zip(
                        (
                            "queued_to_replica_start_s",
                            "replica_done_to_merged_s",
                            "merged_to_next_queued_s",
                        ),
                        parts,
                        strict=True,
                    )
                },
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def measure_big_job(c: Any, root: Path, shards: int) -> dict[str, Any]:
    """One job of ``shards`` shards (8 short records each) on two workers, to its end: wall,
    and per round the scheduler's overhead early and late in the job (flat is the goal)."""
    import statistics

    from distillq.app.demo import prepare

    base = prepare(c.settings.storage, 16)
    data = root / "big.jsonl"
    with data.open("w") as f:
        for i in range(shards * 8):
            f.write(json.dumps({"text": f"def g{i}(y):\n    return y * {i % 89}\n"}) + "\n")
    student = {**base["students"][0], "epochs": 1, "batch_size": 8}
    job = c.job(
        {**base, "name": "big", "dataset": str(data), "shards": shards, "students": [student]}
    )
    t0 = time.time()
    c.submit(job)
    seen = -1
    while not job.paths.report.exists():
        done = sum(job.paths.shard_stats(i).exists() for i in range(0, shards, 50))
        if done != seen:
            seen = done
            print(f"big job: {time.time() - t0:.0f} s, ~{done * 50} shards cached", flush=True)
        if job.paths.failures_dir.exists() and any(job.paths.failures_dir.iterdir()):
            raise SystemExit(f"big job failed: {list(job.paths.failures_dir.iterdir())}")
        time.sleep(5)
    wall = time.time() - t0
    t = time.perf_counter()
    job_status(load_job(c.settings.storage, job.id), broker.client(c.settings.broker_url))
    status_s = time.perf_counter() - t
    from distillq.storage import checkpoints

    track = student["name"]
    latest = checkpoints.latest(load_job(c.settings.storage, job.id).paths, track)
    assert latest is not None, "the big job ended without a merged version"
    rounds = latest.meta.rounds
    to_start, to_merge, to_next = round_overheads(rounds)
    tenth = max(1, len(rounds) // 10)

    def early_late(xs: list[float]) -> list[float]:
        return [round(statistics.median(xs[:tenth]), 3), round(statistics.median(xs[-tenth:]), 3)]

    return {
        "shards": shards,
        "rounds": len(rounds),
        "wall_s": round(wall, 1),
        "status_in_process_s": round(status_s, 3),
        "queued_to_replica_start_s": early_late(to_start),
        "replica_done_to_merged_s": early_late(to_merge),
        "merged_to_next_queued_s": early_late([max(0.0, x) for x in to_next]),
    }


def plot(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    e = results["enqueue"]
    axes[0].loglog([x["records"] for x in e], [x["enqueue_s"] for x in e], "o-", label="enqueue s")
    axes[0].set_xlabel("records (shards = records / 100)")
    axes[0].set_ylabel("seconds")
    axes[0].set_title("enqueue")
    st = results["status"]
    for t in sorted({x["tracks"] for x in st}):
        pts = [x for x in st if x["tracks"] == t]
        axes[1].loglog(
            [x["shards"] for x in pts],
            [x["status_s"] for x in pts],
            "o-",
            label=f"status, {t} track(s)",
        )
        axes[1].loglog(
            [x["shards"] for x in pts],
            [max(x["frame_s"], 1e-3) for x in pts],
            "x--",
            label=f"first frame in-process, {t} track(s)",
        )
    for t in sorted({x["tracks"] for x in results.get("status_before", [])}):
        pts = [x for x in results["status_before"] if x["tracks"] == t]
        axes[1].loglog(
            [x["shards"] for x in pts],
            [max(x["frame_s"], 1e-3) for x in pts],
            ":",
            color="grey",
            label=f"first frame, earlier run, {t} track(s)",
        )
    axes[1].set_xlabel("shards (half done)")
    axes[1].set_title("status")
    axes[1].legend(fontsize=7)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "scale.png", dpi=110)


def write(results: dict[str, Any], out: Path) -> None:
    (out / "SCALE.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# Scale: distillq's own cost against records, shards, tracks and jobs",
        "",
        f"Last command: `{results['command']}`, {results['started']}, on {results['machine']}. "
        "Each part below comes from the run listed here (`python -m bench.scale` runs them all; "
        "`--parts` reruns some and keeps the rest):",
        "",
        *[f"- {part}: `{cmd}`" for part, cmd in results.get("commands", {}).items()],
        "",
        "Ratios within one part are what to read; the machine is shared.",
        "",
        "## enqueue (a process, no workers)",
        "",
        "| records | shards | enqueue s | peak RSS MiB |",
        "|---|---|---|---|",
        *[
            f"| {x['records']} | {x['shards']} | {x['enqueue_s']} | {x['peak_rss_mib']} |"
            for x in results["enqueue"]
        ],
        "",
        "## status, jobs, watch's first frame (half the shards done)",
        "",
        "| shards | tracks | `status` s | `jobs` s | first frame in-process s |",
        "|---|---|---|---|---|",
        *[
            f"| {x['shards']} | {x['tracks']} | {x['status_s']} | {x['jobs_s']} | {x['frame_s']} |"
            for x in results["status"]
        ],
        "",
        *(
            [
                "Before libyaml read job.yaml (the pure-Python parser; same command, earlier):",
                "",
                "| shards | tracks | `status` s | `jobs` s | first frame in-process s |",
                "|---|---|---|---|---|",
                *[
                    f"| {x['shards']} | {x['tracks']} | {x['status_s']} | {x['jobs_s']} | "
                    f"{x['frame_s']} |"
                    for x in results["status_before"]
                ],
                "",
            ]
            if results.get("status_before")
            else []
        ),
        "## Redis keys and memory around real small jobs (6 shards, two workers)",
        "",
        "| job | keys before | peak | at its end | finished_expires later | memory before KiB "
        "| peak | at its end | finished_expires later |",
        "|---|---|---|---|---|---|---|---|---|",
        *[
            f"| {x['job']} | {x['keys_before']} | {x['keys_peak']} | {x['keys_after']} | "
            f"{x['keys_expired']} | {x['mem_before_kib']} | {x['mem_peak_kib']} | "
            f"{x['mem_after_kib']} | {x['mem_expired_kib']} |"
            for x in results["redis"]
            if "job" in x
        ],
        "",
        f"Keys left after the jobs, by prefix: {results['redis'][-1].get('left_by_prefix')}. "
        "What a job leaves past `finished_expires` is its fired chords' markers "
        "(`celery-taskset-meta-<group>.c`, one per round), which Celery expires 300 s after the "
        "chord fires; nothing of a job outlives that.",
        "",
        *(
            [
                "",
                "## The scheduler's overhead per round against tracks and replicas",
                "",
                "Jobs of 24 shards on the same two workers; medians over every round of every "
                "track.",
                "",
                "| tracks | replicas | job s | chord queued → first replica starts | last "
                "replica done → merged | merged → next round queued |",
                "|---|---|---|---|---|---|",
                *[
                    f"| {x['tracks']} | {x['replicas']} | {x['wall_s']} | "
                    f"{x['queued_to_replica_start_s']} s | {x['replica_done_to_merged_s']} s | "
                    f"{x['merged_to_next_queued_s']} s |"
                    for x in results["rounds"]
                ],
            ]
            if results.get("rounds")
            else []
        ),
        *(
            [
                "",
                "## One job of many shards on two workers, to its end",
                "",
                f"{big['shards']} shards, {big['rounds']} rounds merged, {big['wall_s']} s; "
                f"status of the finished job in-process {big['status_in_process_s']} s."
                + (
                    f" Before the fix (the scheduler read every shard's sidecar at every round, "
                    f"and job.yaml went through the pure-Python parser): {before['wall_s']} s, "
                    f"status {before['status_in_process_s']} s."
                    if before
                    else ""
                ),
                "",
                "| per round, median of the first / last tenth of rounds | first | last "
                "| before the fix: first | last |",
                "|---|---|---|---|---|",
                *[
                    f"| {name} | {big[key][0]} s | {big[key][1]} s | "
                    f"{before.get(key, ['', ''])[0]} s | {before.get(key, ['', ''])[1]} s |"
                    for name, key in (
                        ("chord queued → its replica starts", "queued_to_replica_start_s"),
                        ("last replica done → merged", "replica_done_to_merged_s"),
                        ("merged → next round queued", "merged_to_next_queued_s"),
                    )
                ],
            ]
            if (big := results.get("big_job"))
            and (before := results.get("big_job_before", {})) is not None
            else []
        ),
        "",
        "![scale](scale.png)",
    ]
    (out / "SCALE.md").write_text("\n".join(lines) + "\n")


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=ints, default=ints("1000,10000,100000,600000"))
    p.add_argument("--shards", type=ints, default=ints("10,100,1000,5000"))
    p.add_argument("--tracks", type=ints, default=ints("1,4,16"))
    p.add_argument("--jobs", type=int, default=3)
    p.add_argument("--big-job", type=int, default=1000, help="shards of the job run to its end")
    p.add_argument("--out", type=Path, default=Path("bench"))
    p.add_argument(
        "--parts",
        type=lambda t: t.split(","),
        default=["enqueue", "status", "redis", "rounds", "big"],
        help="what to measure (the rest is kept from an earlier bench/SCALE.json)",
    )
    args = p.parse_args()
    from distillq.app.demo import prepare

    saved = args.out / "SCALE.json"
    results: dict[str, Any] = json.loads(saved.read_text()) if saved.exists() else {}
    results.update(
        command="python -m bench.scale " + " ".join(sys.argv[1:]),
        started=time.strftime("%Y-%m-%d %H:%M:%S"),
        machine=f"{os.cpu_count()} cores",
    )

    def keep(part: str, value: Any) -> None:  # each part lands on its own: a later one may fail
        results[part] = value
        when = time.strftime("%Y-%m-%d %H:%M")
        results.setdefault("commands", {})[part] = f"{results['command']} ({when})"
        saved.write_text(json.dumps(results, indent=2) + "\n")

    with tempfile.TemporaryDirectory(prefix="distillq-scale-") as tmp:
        root = Path(tmp)
        if {"enqueue", "status"} & set(args.parts):
            redis = EmbeddedRedis(root / "redis").start()
            try:
                s = Settings(broker_url=redis.url, storage=root / "storage")
                base = prepare(s.storage, 16)
                if "enqueue" in args.parts:
                    keep("enqueue", measure_enqueue(root, s, base, args.records))
                if "status" in args.parts:
                    keep("status", measure_status(root, s, base, args.shards, args.tracks))
            finally:
                redis.stop()
        if {"redis", "rounds", "big"} & set(args.parts):
            from bench.cluster import Cluster
            from distillq.tasks.celery_app import configure

            c = Cluster(root / "cluster")
            c.settings = c.settings.with_(finished_expires=5)
            configure(c.settings)
            try:
                c.worker("a", "teacher,student")
                c.worker("b", "student,teacher")
                if "redis" in args.parts:
                    keep("redis", measure_redis(c, args.jobs))
                if "rounds" in args.parts:
                    keep("rounds", measure_rounds(c, root, [(1, 1), (4, 1), (1, 4), (4, 4)]))
                if "big" in args.parts and args.big_job:
                    keep("big_job", measure_big_job(c, root, args.big_job))
            finally:
                c.close()
    write(results, args.out)
    plot(results, args.out)
    print((args.out / "SCALE.md").read_text())


if __name__ == "__main__":
    main()
