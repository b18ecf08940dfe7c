"""Global checkpoints (one version per merged round) and replica deltas, on storage.

    students/<track>/global/v0007/{params.safetensors, optimizer.pt, meta.json}
    students/<track>/rounds/shard-00003/replica-0/{delta.safetensors, optimizer.pt, stats.json}

Tensors are safetensors (no pickle); optimizer state is ``torch.save``d and read back with
``weights_only=True``. A version directory appears whole (atomic rename) or not at all.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distillq.storage import records
from distillq.storage.atomic import atomic_dir, atomic_path
from distillq.storage.layout import JobPaths
from distillq.storage.records import CheckpointMeta, ReplicaProgress, ReplicaStats

if TYPE_CHECKING:
    import torch

# torch and safetensors are imported where tensors are read or written, not at the top:
# `distillq status` reads checkpoint metadata here and must not pay a second for torch.

KEEP_VERSIONS = 3  # older global versions are pruned; the newest few allow a look back


@dataclass(frozen=True)
class Checkpoint:
    version: int
    dir: Path
    meta: CheckpointMeta

    def params(self) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(self.dir / "params.safetensors")

    def optimizer(self) -> dict[str, Any] | None:
        return _load_optimizer(self.dir / "optimizer.pt")


def _load_optimizer(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def _publish_dir(
    final: Path, params: dict[str, torch.Tensor], extra: tuple[str, Any], meta: Any
) -> None:
    """``params.safetensors``, the ``torch.save``d ``extra`` (if not None) and ``meta.json``,
    appearing together at ``final`` (atomic rename) or not at all."""
    import torch
    from safetensors.torch import save_file

    with atomic_dir(final) as tmp:
        save_file({k: v.contiguous() for k, v in params.items()}, tmp / "params.safetensors")
        if extra[1] is not None:
            torch.save(extra[1], tmp / extra[0])
        records.write(tmp / "meta.json", meta)


def versions(paths: JobPaths, track: str) -> list[int]:
    root = paths.global_dir(track)
    if not root.exists():
        return []
    found = []
    for d in root.iterdir():
        if d.name.startswith("v") and d.name[1:].isdigit() and (d / "meta.json").exists():
            found.append(int(d.name[1:]))
    return sorted(found)


def latest(paths: JobPaths, track: str) -> Checkpoint | None:
    vs = versions(paths, track)
    if not vs:
        return None
    d = paths.global_version(track, vs[-1])
    return Checkpoint(vs[-1], d, records.read(CheckpointMeta, d / "meta.json"))


def merged_shards(paths: JobPaths, track: str) -> set[int]:
    """Shards whose round is folded into the track's latest version."""
    ckpt = latest(paths, track)
    return set(ckpt.meta.merged_shards) if ckpt else set()


def write_version(
    paths: JobPaths,
    track: str,
    version: int,
    params: dict[str, torch.Tensor],
    optimizer: dict[str, Any] | None,
    meta: CheckpointMeta,
) -> Checkpoint:
    """Publish ``v{version}``; FileExistsError if another writer published it first."""

    final = paths.global_version(track, version)
    meta = dataclasses.replace(meta, version=version)
    _publish_dir(final, params, ("optimizer.pt", optimizer), meta)
    for old in versions(paths, track)[:-KEEP_VERSIONS]:
        shutil.rmtree(paths.global_version(track, old), ignore_errors=True)
    return Checkpoint(version, final, meta)


def write_replica(
    paths: JobPaths,
    track: str,
    shard: int,
    replica: int,
    delta: dict[str, torch.Tensor],
    optimizer: dict[str, Any],
    stats: ReplicaStats,
) -> None:
    """Save a replica's delta and optimizer state; ``stats.json`` last marks it complete."""
    import torch
    from safetensors.torch import save_file

    d = paths.replica_dir(track, shard, replica)
    with atomic_path(d / "delta.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in delta.items()}, tmp)
    with atomic_path(d / "optimizer.pt") as tmp:
        torch.save(optimizer, tmp)
    records.write(d / "stats.json", stats)


def replica_stats(paths: JobPaths, track: str, shard: int, replica: int) -> ReplicaStats | None:
    return records.read_if_exists(
        ReplicaStats, paths.replica_dir(track, shard, replica) / "stats.json"
    )


def load_replica(
    paths: JobPaths, track: str, shard: int, replica: int
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    from safetensors.torch import load_file

    d = paths.replica_dir(track, shard, replica)
    return load_file(d / "delta.safetensors"), _load_optimizer(d / "optimizer.pt")


def drop_round(paths: JobPaths, track: str, shard: int) -> None:
    """Delete a merged round's replica files (the merge is recorded in the global meta)."""
    shutil.rmtree(paths.round_dir(track, shard), ignore_errors=True)


def write_progress(
    paths: JobPaths,
    track: str,
    shard: int,
    replica: int,
    params: dict[str, torch.Tensor],
    state: dict[str, Any],
    meta: ReplicaProgress,
) -> None:
    """Publish an in-round checkpoint (whole or not at all), then drop the older ones."""

    root = paths.replica_progress(track, shard, replica)
    final = root / f"step-{meta.steps:06d}"
    if final.exists():
        return
    _publish_dir(final, params, ("state.pt", state), meta)
    for old in root.iterdir():
        if old.name.startswith("step-") and old != final:
            shutil.rmtree(old, ignore_errors=True)


def read_progress(
    paths: JobPaths, track: str, shard: int, replica: int
) -> tuple[ReplicaProgress, dict[str, torch.Tensor], dict[str, Any]] | None:
    """The newest complete in-round checkpoint of a replica, if any."""
    root = paths.replica_progress(track, shard, replica)
    steps = (
        sorted(d for d in root.glob("step-*") if (d / "meta.json").exists())
        if root.exists()
        else []
    )
    if not steps:
        return None
    from safetensors.torch import load_file

    d = steps[-1]
    state = _load_optimizer(d / "state.pt") or {}
    return (
        records.read(ReplicaProgress, d / "meta.json"),
        load_file(d / "params.safetensors"),
        state,
    )


def drop_progress(paths: JobPaths, track: str, shard: int, replica: int) -> None:
    shutil.rmtree(paths.replica_progress(track, shard, replica), ignore_errors=True)
