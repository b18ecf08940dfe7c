"""Failpoints: named places where a drill or a test injects a fault into a real worker.

``DISTILLQ_FAILPOINTS="teacher_shard:1=crash,replica:s:0:0=raise"`` arms them; unset (the
normal case) a failpoint costs one environment lookup. Actions:

- ``crash``: SIGKILL this process, as the OOM killer or a power cut would;
- ``raise``: a RuntimeError, an ordinary bug;
- ``sleep:<s>``: hold the task, to kill or pause the worker at a known point;
- ``hog:<MiB>``: take that much memory, page by page, as a batch too big for the node would
  (under a memory limit the kernel's OOM killer ends the process; past it, ``raise``);
- ``pause``: hold here until a drill lets go: leaves ``<name>.paused`` in the
  ``DISTILLQ_FAILPOINTS_ONCE`` directory and waits (at most ``PAUSE_MAX`` s) until the drill
  deletes it, having done its damage meanwhile (stopped Redis, cut a link).

With ``DISTILLQ_FAILPOINTS_ONCE`` set to a directory, each failpoint fires once: it leaves a
marker file there, so a redelivered task passes the same point (a crash drill that must end).
"""

from __future__ import annotations

import os
import signal
import time

ENV = "DISTILLQ_FAILPOINTS"
ONCE_ENV = "DISTILLQ_FAILPOINTS_ONCE"
PAUSE_MAX = 300.0


def armed() -> dict[str, str]:
    spec = os.environ.get(ENV, "")
    points = (p.partition("=") for p in spec.split(",") if p.strip())
    return {name.strip(): action.strip() or "raise" for name, _, action in points}


def hit(name: str) -> None:
    action = armed().get(name) if ENV in os.environ else None
    if action is None:
        return
    once_dir = os.environ.get(ONCE_ENV)
    marker = os.path.join(once_dir or ".", name.replace("/", "_"))
    if once_dir:
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return  # fired before
    if action == "pause":
        held = f"{marker}.paused"
        open(held, "w").close()
        deadline = time.monotonic() + PAUSE_MAX
        while os.path.exists(held) and time.monotonic() < deadline:
            time.sleep(0.05)
    elif action == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action.startswith("hog:"):
        taken: list[bytearray] = []
        for _ in range(int(action.split(":", 1)[1]) // 16):
            taken.append(bytearray(16 * 2**20))  # zero-filled: every page is touched
            time.sleep(0.005)
        raise RuntimeError(f"failpoint {name} took {len(taken) * 16} MiB and lived")
    elif action.startswith("sleep:"):
        time.sleep(float(action.split(":", 1)[1]))
    else:
        raise RuntimeError(f"failpoint {name} fired")
