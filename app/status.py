"""A job's state, derived from storage (what is done) and Redis (what is running now)."""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

from app import control, live
from app.job_store import Job
from storage.atomic import read_json
from storage.checkpoints import merged_shards
from tasks.pipeline import teacher_key


def job_status(job: Job, redis_client: Any | None = None) -> dict[str, Any]:
    running = live.progress(redis_client, job.id) if redis_client is not None else {}
    failures = {}
    if job.paths.failures_dir.exists():
        for f in sorted(job.paths.failures_dir.glob("*.json")):
            rec = read_json(f)
            failures[f.stem] = {"task": rec["task"], "error": rec["error"]}
    shards = []
    for i in range(job.n_shards):
        key = teacher_key(i)
        entry: dict[str, Any] = {"shard": i, "state": "pending"}
        if job.paths.shard_stats(i).exists():
            st = read_json(job.paths.shard_stats(i))
            entry.update(
                state="done",
                tokens=st["tokens"],
                bytes=st["bytes"],
                tokens_per_s=st["tokens_per_s"],
            )
        elif key in failures:
            entry.update(state="failed", error=failures[key]["error"])
        elif key in running:
            entry.update(state="running", progress=running[key])
        shards.append(entry)
    tracks = {}
    for spec in job.spec.students:
        merged = sorted(merged_shards(job.paths, spec.name))
        live_replicas = {k: v for k, v in running.items() if k.startswith(f"replica-{spec.name}-")}
        tracks[spec.name] = {
            "rounds_merged": len(merged),
            "rounds": job.n_shards,
            "merged_shards": merged,
            "running": live_replicas,
            "replicas": spec.replicas,
        }
    done = job.paths.report.exists()
    stopped = control.state(job)
    state = (
        "done"
        if done
        else stopped
        if stopped != control.RUNNING
        else "failed"
        if failures
        else "running"
        if running or any(s["state"] == "done" for s in shards)
        else "queued"
    )
    created = (
        dt.datetime.fromisoformat(job.info["created"]).timestamp()
        if "created" in job.info
        else None
    )
    return {
        "job_id": job.id,
        "created_at": created,
        "state": state,
        "mode": job.spec.mode,
        "shards": shards,
        "tracks": tracks,
        "teacher_eval": job.paths.teacher_eval.exists() if job.spec.has_teacher else None,
        "failures": failures,
        "data": job.info.get("data", {}),  # skipped lines and truncated records, from enqueue
        "report": str(job.paths.report) if done else None,
        "at": time.time(),
    }


def _bar(done: float, total: float, width: int = 24) -> str:
    frac = 0.0 if total <= 0 else min(1.0, done / total)
    full = int(frac * width)
    return "[" + "#" * full + "." * (width - full) + f"] {frac * 100:5.1f}%"


def _eta(status: dict[str, Any], done: float, total: float) -> str:
    """Time left if the rest goes as fast as what is done so far."""
    start = status.get("created_at")
    if not start or total <= 0 or done <= 0 or done >= total:
        return ""
    elapsed = status["at"] - start
    left = elapsed * (total - done) / done
    return f"  ETA {int(left // 60)}:{int(left % 60):02d}"


def render(status: dict[str, Any]) -> str:
    """Progress bars for the terminal: teacher shards, then each student track, with ETAs."""
    shards = status["shards"]
    done = sum(s["state"] == "done" for s in shards)
    partial = sum(
        s["progress"]["samples"] / max(1, s["progress"]["of"])
        for s in shards
        if s["state"] == "running"
    )
    rates = [s["progress"]["tokens_per_s"] for s in shards if s["state"] == "running"]
    lines = [f"{status['job_id']}  {status['state']}"]
    if status["state"] in (control.PAUSED, control.CANCELLED):
        lines[0] += f"  (`distillq resume {status['job_id']}` continues it)"
    lines.append(
        f"  teacher  {_bar(done + partial, len(shards))}  {done}/{len(shards)} shards"
        + (f"  {rates[0]:.0f} tok/s" if rates else "")
        + _eta(status, done + partial, len(shards))
    )
    for name, t in status["tracks"].items():
        cur = ""
        frac = 0.0
        for p in t["running"].values():
            frac += p.get("step", 0) / max(1, p.get("steps", 1)) / t["replicas"]
            cur = f"  loss {p.get('loss', float('nan')):.3f}  {p.get('tokens_per_s', 0):.0f} tok/s"
        lines.append(
            f"  {name:<8} {_bar(t['rounds_merged'] + frac, t['rounds'])}  {t['rounds_merged']}/{t['rounds']} rounds{cur}"
            + _eta(status, t["rounds_merged"] + frac, t["rounds"])
        )
    for key, f in status["failures"].items():
        lines.append(f"  FAILED {key}: {f['error']}")
    return "\n".join(lines)


def dumps(status: dict[str, Any]) -> str:
    return json.dumps(status, indent=2, default=str)
