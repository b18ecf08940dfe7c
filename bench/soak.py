"""`make soak`: many small jobs back to back on a long-lived `distillq up` cluster, with kills.

    python -m bench.soak [--jobs 20] [--records 96] [--out bench]

`distillq up --workers 2` against a Redis of the soak's own (AOF on, so it can be restarted),
then ``--jobs`` demo-sized jobs one after another. During about every job a worker is killed
with SIGKILL while it holds a task:

- most kills hit the pool process running the task (as the OOM killer does); Celery replaces
  it and the task is re-queued;
- every fifth kill takes a whole node (its process group) and starts it again under the same
  name, as a supervisor would; the node's own check hands back what it held.

Halfway, Redis itself is stopped and started. With ``--sentinel`` the broker is a primary, a
replica and three sentinels instead (workers/redis_ha.py), and in three jobs (a quarter, half
and three quarters of the way) the primary is SIGKILLed mid-job: a replica is promoted, and the
dead one rejoins as a replica (`make soak-ha`). After each job the soak checks that every shard
verifies and every round merged exactly once, counts the work redone (deliveries beyond the
first), and records the RSS of worker 0's main process, which is never killed: it lives
through all the jobs, so its memory must stay flat. Writes bench/SOAK.{json,md}; the figures
go into docs/RELIABILITY.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

from distillq.core.control.status import job_status, pulse
from distillq.core.job.jobs import load_job
from distillq.core.runtime import broker, live
from distillq.core.runtime.settings import Settings
from distillq.storage import cache, checkpoints
from distillq.workers import cluster
from distillq.workers.launch import spawn_worker, stop_process_group
from distillq.workers.redis_ha import MASTER, RedisHA
from distillq.workers.redis_server import EmbeddedRedis, free_port

STALL = 300.0  # seconds without any progress before the soak calls a job stuck


def cli(s: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **s.to_env()}
    return subprocess.run(
        [sys.executable, "-m", "distillq", *args], env=env, capture_output=True, text=True
    )


def small_spec(storage: Path, records: int) -> dict[str, Any]:
    from distillq.app.demo import prepare

    spec = prepare(storage, records)
    spec["shards"] = 3
    student = {**spec["students"][0], "epochs": 1, "batch_size": 8}
    spec["students"] = [{**student, "name": "kd"}]
    return spec


def workers_of(storage: Path) -> list[int]:
    return list(json.loads((storage / "cluster.json").read_text())["worker_pids"])


def busy_node(job: Any, r: Any) -> int | None:
    """The index of a worker (localN@...) that is running a task of ``job`` now."""
    st = job_status(job, r)
    running = [sh.progress for sh in st.shards if sh.state == "running" and sh.progress]
    for t in st.tracks.values():
        running += list(t.running.values())
    nodes = [str(p.get("node", "")) for p in running]
    found = [int(n[len("local") :].split("@")[0]) for n in nodes if n.startswith("local")]
    return random.choice(found) if found else None


def check_landed(job: Any) -> tuple[bool, bool]:
    shards_ok = all(
        cache.verified(job.paths.shard(i), job.paths.shard_stats(i)) is not None
        for i in range(job.n_shards)
    )
    ckpt = checkpoints.latest(job.paths, "kd")
    merged_once = (
        ckpt is not None
        and sorted(ckpt.meta.merged_shards) == list(range(job.n_shards))
        and ckpt.version == job.n_shards == len(ckpt.meta.rounds)
    )
    return shards_ok, merged_once


def redone(r: Any, job_id: str) -> tuple[int, int]:
    """(shards and replicas delivered again, merge deliveries beyond one per round). A merge
    may come twice, from its chord and from a redelivered replica that saw the round whole;
    the second finds it merged and does nothing."""
    again = {task: n - 1 for task, n in live.attempts(r, job_id).items()}
    merges = sum(n for task, n in again.items() if task.startswith("merge-"))
    return sum(again.values()) - merges, merges


def soak(
    root: Path, jobs: int, records: int, seed: int = 0, sentinel: bool = False
) -> dict[str, Any]:
    random.seed(seed)
    redis = EmbeddedRedis(root / "redis", appendonly=True)
    ha = RedisHA(root / "ha")
    if sentinel:
        ha.start()
        s = Settings(
            broker_url=ha.url, sentinel_master=MASTER, storage=root / "storage", heartbeat_seconds=2
        )
    else:
        redis.start()
        s = Settings(broker_url=redis.url, storage=root / "storage", heartbeat_seconds=2)
    failover_jobs = sorted({max(1, jobs * k // 4) for k in (1, 2, 3)}) if sentinel else []
    failovers: list[dict[str, Any]] = []
    spec_file = root / "job.yaml"
    spec_file.write_text(yaml.safe_dump(small_spec(s.storage, records)))
    print(cluster.up(s, 2, free_port()).splitlines()[0], flush=True)
    r = broker.client(s.broker_url, s.sentinel_master)
    rows: list[dict[str, Any]] = []
    kills = whole = 0
    restarted_redis_at = None
    spare: list[subprocess.Popen[bytes]] = []  # nodes restarted by the soak after a whole kill
    try:
        for j in range(1, jobs + 1):
            res = cli(s, "enqueue", str(spec_file))
            if res.returncode != 0:
                raise SystemExit(f"enqueue failed: {res.stderr}")
            job_id = res.stdout.strip().splitlines()[-1]
            job = load_job(s.storage, job_id)
            started, killed, moved_at, last = time.time(), "", time.time(), ""
            while True:
                st = job_status(job)
                if st.state in ("done", "failed"):
                    break
                if (now := pulse(st)) != last:
                    last, moved_at = now, time.time()
                if time.time() - moved_at > STALL:
                    raise SystemExit(f"job {j} ({job_id}) made no progress for {STALL:.0f} s")
                if (
                    j in failover_jobs
                    and st.state == "running"
                    and j not in [f["job"] for f in failovers]
                ):
                    failovers.append({"job": j, **fail_over(ha)})
                if (
                    not sentinel
                    and j == jobs // 2
                    and restarted_redis_at is None
                    and st.state == "running"
                ):
                    redis.stop()
                    time.sleep(3)
                    redis.start()
                    restarted_redis_at = j
                whole_next = (kills + 1) % 5 == 0  # the whole node 1, never worker 0
                node = None if killed else busy_node(job, r)
                if node is not None and node < 2 and (node == 1 or not whole_next):
                    pid = workers_of(s.storage)[node]
                    if whole_next:
                        os.killpg(pid, signal.SIGKILL)  # the whole node, then restart it
                        whole += 1
                        spare.append(
                            spawn_worker(
                                s,
                                ["student", "teacher"],
                                s.storage / "logs" / "worker-1.log",
                                hostname=f"local1@{os.uname().nodename}",
                            )
                        )
                        _replace_pid(s.storage, 1, spare[-1].pid)
                        killed = "node 1"
                    else:
                        for child in psutil.Process(pid).children():
                            child.kill()  # the pool process running the task
                        killed = f"pool of {node}"
                    kills += 1
                time.sleep(0.2)
            shards_ok, merged_once = check_landed(job)
            main = psutil.Process(workers_of(s.storage)[0])
            row = {
                "job": j,
                "state": st.state,
                "seconds": round(time.time() - started, 1),
                "killed": killed,
                "redone": (again := redone(r, job_id))[0],
                "merges_again": again[1],
                "shards_verified": shards_ok,
                "merged_once": merged_once,
                "worker0_rss_mb": round(main.memory_info().rss / 2**20, 1),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            if st.state != "done":
                break
    finally:
        for p in spare:
            stop_process_group(p)
        cli(s, "down")
        redis.stop()
        ha.stop()
    rss2, rss_last = rows[min(1, len(rows) - 1)]["worker0_rss_mb"], rows[-1]["worker0_rss_mb"]
    return {
        "jobs": len(rows),
        "finished": sum(x["state"] == "done" for x in rows),
        "kills": kills,
        "whole_node_kills": whole,
        "redis_restart_during_job": restarted_redis_at,
        "sentinel": sentinel,
        "failovers": failovers,
        "redone": sum(x["redone"] for x in rows),
        "merges_again": sum(x["merges_again"] for x in rows),
        "all_shards_verified": all(x["shards_verified"] for x in rows),
        "all_rounds_merged_once": all(x["merged_once"] for x in rows),
        "rss_job2_mb": rss2,
        "rss_last_mb": rss_last,
        "rss_growth": round(rss_last / rss2 - 1, 4),
        "rows": rows,
        "seed": seed,
        "records_per_job": records,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def fail_over(ha: RedisHA) -> dict[str, float]:
    """SIGKILL the primary; seconds until a replica takes writes; the dead one rejoins."""
    t = time.monotonic()
    dead = ha.kill_primary()
    ha.wait_promoted(dead)
    promoted = time.monotonic() - t
    ha.rejoin(dead)
    return {"promoted_s": round(promoted, 1)}


def _replace_pid(storage: Path, index: int, pid: int) -> None:
    f = storage / "cluster.json"
    state = json.loads(f.read_text())
    state["worker_pids"][index] = pid
    f.write_text(json.dumps(state))


def write(results: dict[str, Any], out: Path) -> None:
    name = "SOAK-sentinel" if results["sentinel"] else "SOAK"
    (out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# Soak: jobs back to back on a long-lived cluster, with kills and a Redis restart",
        "",
        f"Command: `make soak{'-ha' if results['sentinel'] else ''}` (`python -m bench.soak "
        f"--jobs {results['jobs']}{' --sentinel' if results['sentinel'] else ''}`), "
        f"{results['started']}, seed {results['seed']}, {results['records_per_job']} records a job.",
        "",
        f"- jobs finished: {results['finished']} of {results['jobs']}",
        f"- SIGKILLs while a task ran: {results['kills']} "
        f"({results['whole_node_kills']} of a whole node, restarted; the rest of the pool "
        "process running the task)",
        (
            f"- Redis Sentinel: the primary SIGKILLed during jobs "
            f"{', '.join(str(f['job']) for f in results['failovers'])}; a replica took writes "
            f"{', '.join(str(f['promoted_s']) for f in results['failovers'])} s later"
            if results["sentinel"]
            else f"- Redis stopped and started during job {results['redis_restart_during_job']}"
        ),
        f"- shards and replicas delivered again (all jobs): {results['redone']}; merges "
        f"delivered twice (the second a no-op): {results['merges_again']}",
        f"- every shard verified: {results['all_shards_verified']}; every round merged "
        f"exactly once: {results['all_rounds_merged_once']}",
        f"- worker 0 main process RSS: {results['rss_job2_mb']} MB after job 2, "
        f"{results['rss_last_mb']} MB after job {results['jobs']} "
        f"({results['rss_growth']:+.1%})",
        "",
        "| job | state | s | killed | redone | merges again | shards verified | merged once "
        "| worker 0 RSS MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for x in results["rows"]:
        lines.append(
            f"| {x['job']} | {x['state']} | {x['seconds']} | {x['killed']} | {x['redone']} | "
            f"{x['merges_again']} | "
            f"{x['shards_verified']} | {x['merged_once']} | {x['worker0_rss_mb']} |"
        )
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=20)
    p.add_argument("--records", type=int, default=96)
    p.add_argument("--out", type=Path, default=Path("bench"))
    p.add_argument("--sentinel", action="store_true", help="Redis Sentinel, three primary kills")
    p.add_argument("--keep", type=Path, help="run in this directory and keep it (logs)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="distillq-soak-") as tmp:
        root = args.keep or Path(tmp)
        results = soak(root, args.jobs, args.records, sentinel=args.sentinel)
    write(results, args.out)
    print((args.out / ("SOAK-sentinel.md" if args.sentinel else "SOAK.md")).read_text())
    ok = (
        results["finished"] == results["jobs"]
        and results["all_shards_verified"]
        and results["all_rounds_merged_once"]
        and abs(results["rss_growth"]) <= 0.10
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
