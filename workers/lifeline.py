"""Processes that die with whoever started them, and starters that clean up on any signal.

`distillq demo`, stopped by SIGTERM (as `timeout`, systemd, a CI runner or `docker stop` do),
once left its two workers running as orphans, busy against the Redis that had died with it.
Two mechanisms close that, on every path:

- ``exit_on_signals``: SIGTERM and SIGHUP raise ``SystemExit`` in the starter (SIGINT already
  raises ``KeyboardInterrupt``), so its ``finally`` blocks and exit stacks stop its children.
- ``die_with_parent``: a child asks the kernel (``PR_SET_PDEATHSIG``) for a signal when its
  parent dies, for the starter's own crash or a SIGKILL, where no cleanup code runs. Celery's
  pool children ask for it too, so a worker's children never outlive the worker.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL, parent: int | None = None) -> None:
    """Have the kernel send ``sig`` to this process when its parent dies (Linux; elsewhere a
    no-op). ``parent``: the pid it was started by, to catch a parent that died already."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), sig)  # orphaned before the request was in place


def tied(sig: int = signal.SIGKILL, then: Callable[[], Any] | None = None) -> Callable[[], None]:
    """A ``preexec_fn`` for ``subprocess.Popen``: the child dies with the calling process.
    ``then``: another preexec_fn to run after (resource limits)."""
    parent = os.getpid()

    def preexec() -> None:
        die_with_parent(sig, parent)
        if then is not None:
            then()

    return preexec


def exit_on_signals() -> None:
    """SIGTERM and SIGHUP end this process like Ctrl-C does: through its cleanup code."""

    def leave(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, leave)
