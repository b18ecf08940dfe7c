"""A node cut off by the network, not killed: the multi-host case the reaper exists for.

Two workers run in network namespaces of their own (tests/netns.py), each with its own
hostname. A teacher node's link is cut mid-shard and, later, a student node's link mid-replica.
The healthy nodes notice the silent heartbeats and take the work over. When the links come
back, the cut-off workers finish what they were doing and try to publish it: the fence (the
attempt counter, checked where results are renamed into place) refuses those late writes, so
nothing is corrupted or duplicated, and the nodes rejoin the cluster.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from distillq.core.job.jobs import load_job
from distillq.core.runtime import broker
from distillq.core.runtime.registry import list_nodes
from distillq.core.runtime.settings import Settings
from distillq.storage import cache, checkpoints
from distillq.workers.redis_server import EmbeddedRedis
from tests import netns
from tests.conftest import Workers, failpoints, run_cli
from tests.e2e.test_faults import assert_landed_once, wait_for
from tests.e2e.test_pipeline import enqueue

NO_NAMESPACES = netns.unavailable()
pytestmark = pytest.mark.skipif(bool(NO_NAMESPACES), reason=str(NO_NAMESPACES))

CUT_TEACHER, CUT_STUDENT = "cut-teacher@test", "cut-student@test"


@pytest.fixture
def nodes() -> Iterator[tuple[netns.Node, netns.Node]]:
    tag = str(os.getpid() % 10000)
    made = [netns.Node(tag, 1), netns.Node(tag, 2)]
    try:
        for n in made:
            n.create()
        yield made[0], made[1]
    finally:
        for n in made:
            n.destroy()


@pytest.fixture
def guarded_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    # A password: without one Redis refuses every client that is not on its loopback.
    r = EmbeddedRedis(tmp_path / "redis", password="partition-test")
    r.start()
    yield r
    r.stop()


def test_cut_off_nodes_are_replaced_and_their_late_writes_fenced(
    nodes, guarded_redis, tmp_path, make_spec
):
    t_node, s_node = nodes
    s = Settings(broker_url=guarded_redis.url, storage=tmp_path / "storage", heartbeat_seconds=1)
    drill = tmp_path / "drill"
    env = failpoints(drill, "teacher_shard:1=pause", "replica:s:1:0=pause")
    w = Workers(s, tmp_path / "logs")
    try:
        w.start("teacher", "cut-teacher", extra_env=env, preexec_fn=t_node.enter("box-t"))
        w.start("student", "cut-student", extra_env=env, preexec_fn=s_node.enter("box-s"))
        r = broker.client(s.broker_url, s.sentinel_master)
        hosts = {n.info.hostname: n.info.host for n in list_nodes(r)}
        assert hosts[CUT_TEACHER] == "box-t" and hosts[CUT_STUDENT] == "box-s"
        job_id = enqueue(s, make_spec(n_records=120, shards=3))
        job = load_job(s.storage, job_id)

        # 1. The teacher node is cut off while it holds shard 1.
        held = drill / "teacher_shard:1.paused"
        wait_for(held.exists, 300, "the teacher node to start shard 1")
        t_node.cut()
        held.unlink()  # it goes on computing, unable to reach Redis
        w.start("teacher", "teacher")
        wait_for(job.paths.shard_stats(1).exists, 300, "another teacher node to publish shard 1")
        rescued = cache.file_sha256(job.paths.shard(1))
        t_node.heal()

        # 2. The student node is cut off while it trains round 1's replica.
        held = drill / "replica:s:1:0.paused"
        wait_for(held.exists, 300, "the student node to start round 1")
        s_node.cut()
        held.unlink()
        w.start("student", "student")
        wait_for(
            lambda: 1 in checkpoints.merged_shards(job.paths, "s"), 300, "round 1 merged elsewhere"
        )
        s_node.heal()

        res = run_cli(s, "wait", job_id, "--stall", "180")
        assert res.returncode == 0, res.stderr + w.log("cut-teacher") + w.log("cut-student")
        # The late writers reach the fence once TCP gets through again.
        for name in ("cut-teacher", "cut-student"):
            wait_for(lambda n=name: "superseded" in w.log(n), 300, f"{name}'s late write")
        assert cache.file_sha256(job.paths.shard(1)) == rescued  # not overwritten
        assert_landed_once(job)  # every round merged once, no temp file left

        def rejoined() -> bool:
            up = {n.info.hostname for n in list_nodes(r) if n.state == "up"}
            return {CUT_TEACHER, CUT_STUDENT} <= up

        wait_for(rejoined, 120, "the cut-off nodes to beat again")
    finally:
        t_node.heal()
        s_node.heal()
        w.stop_all()
