"""The fence: an attempt that a later delivery of the same work superseded publishes nothing.

The end-to-end case (a node cut off by the network, its late write refused) is in
tests/e2e/test_partition.py; here the fence itself, against a real Redis, on the real writers.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from distillq.core.runtime import broker, live
from distillq.errors import Superseded
from distillq.storage import atomic, cache, keys


def test_a_superseded_attempt_publishes_nothing_and_leaves_no_temp_file(settings, tmp_path):
    r = broker.client(settings.broker_url, settings.sentinel_master)
    job, task = "fencejob", "teacher-00000"
    r.delete(keys.attempts(job, task))
    mine = live.next_attempt(r, job, task, 60)
    out = tmp_path / "shard-00000.h5"
    fence = functools.partial(live.check_fence, r, job, task, mine)
    meta = cache.ShardMeta(
        shard=0,
        vocab_size=100,
        width=2,
        temperature=1.0,
        teacher_fingerprint="t",
        tokenizer_fingerprint="k",
        record_range=(0, 1),
        source="local",
    )

    def write(value: int, check=fence) -> None:
        with atomic.fenced(check), cache.CacheWriter(out, meta) as w:
            ids = np.arange(4, dtype=np.int32) + value
            w.add(0, ids, np.arange(3), np.ones((3, 2), np.int64), np.full((3, 2), -0.5))

    write(0)  # the only attempt so far: published
    assert out.exists()
    first = cache.file_sha256(out)
    assert live.next_attempt(r, job, task, 60) == mine + 1  # handed to another node
    with pytest.raises(Superseded, match=f"attempt {mine} was superseded by attempt {mine + 1}"):
        write(1)
    assert cache.file_sha256(out) == first  # the earlier file stands, untouched
    assert not list(tmp_path.glob("*.tmp"))
    with (
        pytest.raises(Superseded),
        atomic.fenced(fence),
        atomic.atomic_dir(tmp_path / "v0001") as d,
    ):
        (d / "delta.safetensors").write_bytes(b"x")
    assert not (tmp_path / "v0001").exists()
    later = functools.partial(live.check_fence, r, job, task, mine + 1)
    write(2, later)  # the later attempt publishes over it
    assert cache.file_sha256(out) != first
