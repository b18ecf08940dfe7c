"""The memory a worker may use, and whether the kernel's out-of-memory killer has struck: read
from the worker's memory cgroup (v2 or v1: containers, systemd units, Kubernetes pods), else
the machine's RAM.

A task whose pool process dies with SIGKILL leaves no exception behind; these numbers are how
the failure can say it was memory, and which knobs lower it (``tasks.base``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as a page-rounded 2^63


@dataclass(frozen=True)
class Memory:
    limit_mb: float
    """The cgroup's limit, or the machine's RAM where there is none."""
    peak_mb: float | None
    """The cgroup's high-water mark of usage (None without a cgroup)."""
    oom_kills: int
    """Processes of the cgroup the OOM killer has killed so far."""
    cgroup: str = ""


def _own_cgroup(proc: str = "/proc/self/cgroup") -> tuple[Path, int] | None:
    """The directory of this process's memory cgroup and its version (2 or 1)."""
    try:
        lines = Path(proc).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "memory":
            base, version = CGROUP_ROOT / "memory", 1
        elif controllers == "" and (CGROUP_ROOT / "cgroup.controllers").exists():
            base, version = CGROUP_ROOT, 2
        else:
            continue
        # Inside a container the path is the host's view: drop leading parts until it exists.
        parts = [p for p in path.split("/") if p]
        for i in range(len(parts) + 1):
            d = base.joinpath(*parts[i:])
            if d.is_dir():
                return d, version
    return None


def _read_int(f: Path) -> int | None:
    try:
        text = f.read_text().strip()
    except OSError:
        return None
    return None if text == "max" else int(text)


def _oom_kills(f: Path) -> int:
    try:
        for line in f.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == "oom_kill":
                return int(value)
    except OSError:
        pass
    return 0


def now() -> Memory:
    import psutil

    ram_mb = psutil.virtual_memory().total / 2**20
    found = _own_cgroup()
    if found is None:
        return Memory(limit_mb=ram_mb, peak_mb=None, oom_kills=0)
    d, version = found
    if version == 2:
        limit, peak, events = d / "memory.max", d / "memory.peak", d / "memory.events"
    else:
        limit, peak, events = (
            d / "memory.limit_in_bytes",
            d / "memory.max_usage_in_bytes",
            d / "memory.oom_control",
        )
    lim, top = _read_int(limit), _read_int(peak)
    limit_mb = ram_mb if lim is None or lim >= UNLIMITED else min(ram_mb, lim / 2**20)
    return Memory(
        limit_mb=limit_mb,
        peak_mb=None if top is None else top / 2**20,
        oom_kills=_oom_kills(events),
        cgroup=str(d),
    )
