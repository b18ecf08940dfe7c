"""Terminal rendering of a job's status: progress bars, ETAs, and `watch`'s redraw loop."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only a type here: `distillq --help` must not load the job machinery
    from distillq.core.control.status import JobStatus
    from distillq.storage.records import Outputs

EXIT_FAILED, EXIT_TIMEOUT = 1, 3
TERMINAL = ("done", "failed", "cancelled")
STOPPED = ("paused", "cancelled")


def _bar(done: float, total: float, width: int = 24) -> str:
    frac = 0.0 if total <= 0 else min(1.0, done / total)
    full = int(frac * width)
    return "[" + "#" * full + "." * (width - full) + f"] {frac * 100:5.1f}%"


def _eta(status: JobStatus, done: float, total: float) -> str:
    """Time left if the rest goes as fast as what is done so far."""
    start = status.created_at
    if not start or total <= 0 or done <= 0 or done >= total:
        return ""
    elapsed = status.at - start
    left = elapsed * (total - done) / done
    return f"  ETA {int(left // 60)}:{int(left % 60):02d}"


def render(status: JobStatus) -> str:
    """Progress bars for the terminal: teacher shards, then each student track, with ETAs.

    A track's loss is the mixed training loss α·CE + (1−α)·τ²·KD, with its parts beside it.
    """
    shards = status.shards
    done = sum(s.state == "done" for s in shards)
    running = [s.progress for s in shards if s.state == "running" and s.progress]
    partial = sum(p.get("samples", 0) / max(1, p.get("of", 1)) for p in running)
    rates = [p.get("tokens_per_s", 0.0) for p in running]
    lines = [f"{status.job_id}  {status.state}"]
    if status.data.of_records:
        lines[0] += f"  (first {status.data.records} of {status.data.of_records} records)"
    if status.state in STOPPED:
        lines[0] += f"  (`distillq resume {status.job_id}` continues it)"
    if status.broker:
        lines.append(f"  broker: {status.broker}")
    lines.append(
        f"  teacher  {_bar(done + partial, len(shards))}  {done}/{len(shards)} shards"
        + (f"  {rates[0]:.0f} tok/s" if rates else "")
        + (
            f"  on {', '.join(sorted({p['node'] for p in running if p.get('node')}))}"
            if any(p.get("node") for p in running)
            else ""
        )
        + _eta(status, done + partial, len(shards))
    )
    for p in running:
        if p.get("endpoint"):
            err = f"  last error: {p['last_error']}" if p.get("last_error") else ""
            lines.append(f"  teacher endpoint {p['endpoint']}{err}")
            break
    for name, t in status.tracks.items():
        cur = ""
        frac = 0.0
        for p in t.running.values():
            frac += p.get("step", 0) / max(1, p.get("steps", 1)) / t.replicas
            loss, rate = p.get("loss", float("nan")), p.get("tokens_per_s", 0.0)
            if "ce" in p and "kd" in p and p["kd"] == p["kd"]:  # NaN KD: a CE-only track
                what = f"mixed loss α·CE+(1−α)·KD {loss:.3f} (CE {p['ce']:.3f}, KD {p['kd']:.3f})"
            else:
                what = f"CE loss {loss:.3f}"
            on = f"  on {p['node']}" if p.get("node") else ""
            cur = f"  {what}  {rate:.0f} tok/s{on}"
        if t.merging and not cur:
            cur = "  merging"
        if t.phase:
            cur += f"  [{t.phase}]"
        lines.append(
            f"  {name:<8} {_bar(t.rounds_merged + frac, t.rounds)}  {t.rounds_merged}/{t.rounds} rounds{cur}"
            + _eta(status, t.rounds_merged + frac, t.rounds)
        )
    lines += [f"  waiting: {w}" for w in status.waiting]
    lines += [f"  {u}" for u in status.unheard]
    for key, f in status.failures.items():
        lines.append(f"  FAILED {key}: {f.error}")
    return "\n".join(lines)


def dumps(status: JobStatus) -> str:
    return json.dumps(status.to_json(), indent=2, default=str)


def follow(get: Callable[[], JobStatus], interval: float, timeout: float | None = None) -> int:
    """Print progress until the job is done (0), failed (1) or the timeout passes (3)."""
    tty = sys.stdout.isatty()
    last, printed_at = "", 0.0
    deadline = None if timeout is None else time.time() + timeout
    while True:
        st = get()
        text = render(st)
        # On a terminal, redraw in place; in a log, a new block at most every 10 s.
        due = tty or time.time() - printed_at >= 10 or st.state in TERMINAL
        if text != last and due:
            if tty and last:
                sys.stdout.write(f"\x1b[{last.count(chr(10)) + 1}F\x1b[J")
            print(text, flush=True)
            last, printed_at = text, time.time()
        if st.state in TERMINAL:
            return 0 if st.state == "done" else EXIT_FAILED
        if deadline is not None and time.time() > deadline:
            return EXIT_TIMEOUT
        time.sleep(interval)


def run_hints(outputs: Outputs, chat: bool = False) -> str:
    """Where a track's exported files are, and the command that runs each. ``chat``: the model
    has a chat template (carried into its GGUF): talk to it rather than continue text."""
    lines = [f"  {k:<10} {v}" for k, v in outputs.entries() if k != "gguf_skipped"]
    if outputs.gguf_skipped:
        lines.append(f"  no GGUF: {outputs.gguf_skipped}")
    gguf = outputs.gguf_q8_0 or outputs.gguf_f16
    if gguf and chat:
        ask = "[{'role': 'user', 'content': 'What is the capital of France?'}]"
        lines.append(f"  run with llama.cpp:  llama-cli -m {gguf} -cnv")
        lines.append(
            f'  from Python:         python -c "from llama_cpp import Llama; '
            f"print(Llama(model_path='{gguf}').create_chat_completion({ask}))\""
        )
    elif gguf:
        lines.append(f"  run with llama.cpp:  llama-cli -m {gguf} -p 'def main():' -n 64")
        lines.append(
            f'  from Python:         python -c "from llama_cpp import Llama; '
            f"print(Llama(model_path='{gguf}')('def main():', max_tokens=64))\""
        )
    if outputs.modelfile:
        lines.append(
            f"  with Ollama:         ollama create distilled -f {outputs.modelfile} "
            "&& ollama run distilled"
        )
    return "\n".join(lines)
