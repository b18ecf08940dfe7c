"""Atomic writes: temp file in the same directory, fsync, ``os.replace``.

A reader never sees a partial file under its final name, whatever kills the writer.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from distillq.errors import StorageFull

FILE_MODE, DIR_MODE = 0o644, 0o755

_fence: ContextVar[Callable[[], None] | None] = ContextVar("distillq_fence", default=None)


@contextlib.contextmanager
def fenced(check: Callable[[], None]) -> Iterator[None]:
    """Inside, every atomic publish (``atomic_path``, ``atomic_dir``) calls ``check`` just
    before its rename, and ``check`` raises to refuse it. A task sets it for its attempt, so a
    node that was cut off and presumed dead cannot overwrite what its replacement published
    (tasks/base.py). The temporary file is removed as on any other failure."""
    token = _fence.set(check)
    try:
        yield
    finally:
        _fence.reset(token)


def _check_fence() -> None:
    if (check := _fence.get()) is not None:
        check()


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success fsync it and rename it into place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp makes 0600 files; workers of other users on shared storage must read them.
    os.chmod(tmp_path, FILE_MODE)
    try:
        yield tmp_path
        _fsync_file(tmp_path)
        _check_fence()
        os.replace(tmp_path, final)
        _fsync_dir(final.parent)
    except OSError as e:
        raise_if_full(e, final)
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


_SPACE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
# h5py reports a failed write as a plain OSError whose text carries the C library's message.
_SPACE_TEXT = ("No space left", "File too large", "Disk quota exceeded")


def raise_if_full(e: BaseException, path: Path) -> None:
    """Turn "disk full" / "file too large" / "quota" into a StorageFull naming ``path``."""
    if not isinstance(e, OSError):
        return
    if e.errno in _SPACE_ERRNOS or any(t in str(e) for t in _SPACE_TEXT):
        raise StorageFull(
            f"no space left writing {path} ({e.strerror or type(e).__name__}); free space on "
            f"{path.parent} or raise the file-size limit, then `distillq resume` the job "
            "(finished work is kept)"
        ) from e


def write_bytes(final: Path, data: bytes) -> None:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def write_json(final: Path, obj: Any) -> None:
    write_bytes(final, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def create_exclusive(path: Path, content: str = "") -> bool:
    """Create ``path`` only if it does not exist yet; True for the one caller that created it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())
    return True


def clear_stale(final: Path) -> int:
    """Remove temporary siblings of ``final`` left by a writer that was killed mid-write."""
    n = 0
    if final.parent.exists():
        for tmp in final.parent.glob(f".{final.name}.*.tmp"):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            n += 1
    return n


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    # A rename is durable only once its directory entry is; not every filesystem allows it.
    with contextlib.suppress(OSError):
        _fsync_file(path)


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``final``; on success rename it to ``final``.

    The rename fails with FileExistsError if ``final`` already exists, which makes creating a
    version directory an exclusive claim: two writers cannot both publish v0007.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    os.chmod(tmp, DIR_MODE)
    try:
        try:
            yield tmp
        except OSError as e:
            raise_if_full(e, final)
            raise
        for f in tmp.iterdir():
            _fsync_file(f)
        _check_fence()
        try:
            os.rename(tmp, final)
        except OSError as e:
            if final.exists():
                raise FileExistsError(str(final)) from e
            raise
        _fsync_dir(final.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
