"""The scheduling logic in-process against the test Redis: round order, advance, finalize once,
merge_if_complete, and the reaper's hand-back. No workers: what the canvas queues is read back
from the Redis lists kombu writes, and the reaper moves real unacknowledged kombu messages."""

from __future__ import annotations

import base64
import dataclasses
import json

import pytest
import redis

from distillq.core.create import create_job
from distillq.core.job.load import load_spec
from distillq.storage import checkpoints, records
from distillq.storage.records import CheckpointMeta, RoundMarker, ShardStats
from distillq.tasks import pipeline, reconcile, sending
from distillq.tasks.celery_app import app, configure
from tests.conftest import replica_stats


@pytest.fixture
def job(settings, make_spec):
    configure(settings)
    return create_job(settings.storage, load_spec(make_spec(n_records=40, shards=3)))


@pytest.fixture
def r(settings):
    return redis.Redis.from_url(settings.broker_url)


def queued(r, queue: str) -> list[tuple[str, list]]:
    """(task name, args) of every message waiting in ``queue``, oldest first."""
    out = []
    for raw in reversed(r.lrange(queue, 0, -1)):  # kombu LPUSHes and its consumers BRPOP
        msg = json.loads(raw)
        args = json.loads(base64.b64decode(msg["body"]))[0]
        out.append((msg["headers"]["task"], args))
    return out


def finish_shard(job, shard: int, finished_at: float) -> None:
    fields = dict(samples=1, tokens=1, target_positions=1, seconds=1.0, tokens_per_s=1.0)
    records.write(
        job.paths.shard_stats(shard),
        ShardStats(
            shard=shard, started_at=0.0, finished_at=finished_at, sha256="", bytes=0, **fields
        ),
    )


def merge(job, shards: list[int]) -> None:
    """Publish a version that holds ``shards`` (no tensors: scheduling reads only the meta)."""
    latest = checkpoints.latest(job.paths, "s")
    version = (latest.version if latest else 0) + 1
    meta = CheckpointMeta(track="s", step=version, merged_shards=shards, rounds=[])
    checkpoints.write_version(job.paths, "s", version, {}, None, meta)


def test_rounds_run_one_at_a_time_in_the_order_shards_finished(job, r):
    assert pipeline.advance(app, job, "s") is None  # nothing finished yet
    assert queued(r, "student") == []
    finish_shard(job, 2, finished_at=10.0)
    finish_shard(job, 0, finished_at=20.0)
    assert pipeline.advance(app, job, "s") == 2  # the first to finish, not the lowest index
    assert records.read(RoundMarker, job.paths.round_inflight("s")).shard == 2
    assert queued(r, "student") == [("distillq.train_replica", [job.id, "s", 2, 0])]
    # A round in flight: nothing else starts, however often the canvas asks.
    assert pipeline.advance(app, job, "s") is None
    assert pipeline.advance(app, job, "s") is None
    assert len(queued(r, "student")) == 1
    merge(job, [2])
    assert pipeline.advance(app, job, "s") == 0
    merge(job, [2, 0])
    assert pipeline.advance(app, job, "s") is None  # shard 1 is not done yet
    assert not job.paths.round_inflight("s").exists()
    finish_shard(job, 1, finished_at=30.0)
    assert pipeline.advance(app, job, "s") == 1
    assert [a[2] for _, a in queued(r, "student")] == [2, 0, 1]


def test_a_paused_job_starts_no_round_until_resumed(job, r):
    from distillq.core.control import state as control

    finish_shard(job, 0, finished_at=1.0)
    control.set_state(job, control.PAUSED)
    assert pipeline.advance(app, job, "s") is None and queued(r, "student") == []
    control.set_state(job, control.RUNNING)
    assert pipeline.advance(app, job, "s") == 0


def test_finalize_is_queued_exactly_once_when_everything_is_merged(job, r):
    assert not pipeline.maybe_finalize(app, job)
    merge(job, [0, 1, 2])
    assert not pipeline.maybe_finalize(app, job)  # the teacher's eval is still missing
    records.write(job.paths.teacher_eval, records.EvalResult(loss=1.0, tokens=1))
    assert pipeline.maybe_finalize(app, job)
    assert not pipeline.maybe_finalize(app, job)
    assert queued(r, "student") == [("distillq.finalize", [job.id])]


def replica_done(job, shard: int, start_version: int) -> None:
    d = job.paths.replica_dir("s", shard, 0)
    d.mkdir(parents=True, exist_ok=True)
    records.write(d / "stats.json", replica_stats(shard=shard, start_version=start_version))


def test_a_redelivered_replica_queues_the_merge_only_when_the_round_is_complete(job, r):
    assert not pipeline.merge_if_complete(app, job, "s", 0)  # no replica saved yet
    merge(job, [1])  # v1
    replica_done(job, 0, start_version=0)  # trained from a stale version: not this round's
    assert not pipeline.merge_if_complete(app, job, "s", 0)
    replica_done(job, 0, start_version=1)
    assert pipeline.merge_if_complete(app, job, "s", 0)
    assert queued(r, "student") == [("distillq.merge_round", [[], job.id, "s", 0])]
    merge(job, [1, 0])
    assert not pipeline.merge_if_complete(app, job, "s", 0)  # merged already


def test_the_reaper_hands_a_dead_nodes_unacked_task_back_once(settings, r):
    from kombu import Connection

    from distillq.storage import keys
    from distillq.workers.reaper import Reaper, record_delivery

    configure(settings)
    sig = app.signature("distillq.teacher_shard", args=("job-x", 4))
    sig.apply_async()
    with Connection(settings.broker_url) as taker:
        queue = taker.SimpleQueue("teacher")
        msg = queue.get(timeout=5)  # delivered, never acknowledged: the node then "dies"
        record_delivery(r, "dead@test", str(msg.delivery_tag))
        assert queued(r, "teacher") == [] and r.hlen("unacked") == 1

        reaper = Reaper(app, r, "live@test")
        try:
            assert reaper.sweep() == 1  # dead@test has no heartbeat
            assert queued(r, "teacher") == [("distillq.teacher_shard", ["job-x", 4])]
            assert r.hlen("unacked") == 0 and not r.exists(keys.deliveries("dead@test"))
            r.delete(keys.reap_claim("dead@test"))
            assert reaper.sweep() == 0  # nothing left to hand back
        finally:
            reaper.close()
        queue.close()


def test_the_reaper_leaves_a_live_nodes_deliveries_alone(settings, r):
    from kombu import Connection

    from distillq.storage import keys
    from distillq.workers.node import Heartbeat, node_info
    from distillq.workers.reaper import Reaper, record_delivery

    configure(settings)
    app.signature("distillq.teacher_shard", args=("job-y", 1)).apply_async()
    beat = Heartbeat(r, node_info("busy@test", ["teacher"], 1), interval=30)
    beat.beat()
    with Connection(settings.broker_url) as taker:
        queue = taker.SimpleQueue("teacher")
        msg = queue.get(timeout=5)
        record_delivery(r, "busy@test", str(msg.delivery_tag))
        reaper = Reaper(app, r, "live@test")
        try:
            assert reaper.sweep() == 0
            assert r.hlen("unacked") == 1 and r.exists(keys.deliveries("busy@test"))
        finally:
            reaper.close()
        msg.ack()
        queue.close()


def test_status_names_work_that_waits_for_a_node_able_to_load_its_model(job, r):
    from distillq.app.view import render
    from distillq.core.control import placement
    from distillq.core.control.status import job_status
    from distillq.core.runtime import live

    teacher = job.spec.teacher.model
    assert job_status(job, r).waiting == []
    # what a node that lacks the model records before it hands a task back
    assert placement.cannot_load("teacher", "/nowhere/teacher") is not None
    live.mark_unable(r, job.id, "gpu-box", teacher, "not mounted")
    live.mark_unable(r, job.id, "cpu-box", teacher, "not mounted")
    st = job_status(job, r)
    assert st.waiting == [
        f"shard 0 waits for a node that can load teacher {teacher} (2 node(s) cannot)"
    ]
    assert f"waiting: shard 0 waits for a node that can load teacher {teacher}" in render(st)


def test_a_send_through_a_producer_the_broker_outage_left_broken_reconnects(job, r):
    """After a Redis restart a pooled producer may keep a channel that kombu closed under it;
    publishing on it fails inside kombu (AttributeError on ``connection.client``), which
    failed a teacher task's retry in CI. sending.send drops the pools and sends again."""
    break_pooled_producer()
    errors = []

    def publish() -> None:
        with app.producer_or_acquire() as producer:
            try:
                producer.publish({"n": 1}, routing_key="student", exchange="")
            except Exception as e:
                errors.append(type(e).__name__)
                raise

    sending.send(app, publish, "a test message")
    assert errors == ["AttributeError"]  # the first try met the broken channel...
    assert r.llen("student") == 1  # ...and the second, on fresh pools, was sent once


def break_pooled_producer() -> None:
    """The producer the pool hands out next (its queue is last in, first out) gets its
    channel closed, as an outage leaves it: kombu disconnects the channel's Redis pool and the
    transport forgets the channel, but the pooled connection keeps it as its default channel."""
    with app.producer_pool.acquire(block=True) as producer:
        producer.channel.close()


def landed(job, shard: int) -> None:
    """A shard file and its sidecar that verify (the bytes are not a real cache: nothing reads them)."""
    from distillq.storage.cache import file_sha256

    path = job.paths.shard(shard)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"shard %d" % shard)
    fields = dict(samples=1, tokens=1, target_positions=1, seconds=1.0, tokens_per_s=1.0)
    stats = ShardStats(shard=shard, started_at=0.0, finished_at=1.0, **fields)
    stats = dataclasses.replace(stats, sha256=file_sha256(path), bytes=path.stat().st_size)
    records.write(job.paths.shard_stats(shard), stats)


def test_after_a_failover_work_storage_owes_and_no_message_holds_is_queued_again(job, r):
    """The primary died with its last writes: the chord of shard 0's round and shard 2's
    message never reached the replica; shard 1's message did. Reconciling queues what is
    owed and not held, once: a second pass finds everything held."""
    pipeline.submit(app, job, [1], teacher_eval=False)  # shard 1's message survived
    landed(job, 0)
    records.write(job.paths.round_inflight("s"), RoundMarker(shard=0, queued_at=1.0))
    queued_again = reconcile.reconcile(app, job, reconcile.held_work(app, r))
    assert queued_again == ["teacher-00002", "teacher-eval", "round s/0"]
    assert sorted(args for _, args in queued(r, "teacher")) == [[job.id], [job.id, 1], [job.id, 2]]
    assert queued(r, "student") == [("distillq.train_replica", [job.id, "s", 0, 0])]
    assert reconcile.reconcile(app, job, reconcile.held_work(app, r)) == []


def test_two_merges_that_both_read_v1_publish_one_v2(job):
    """A failover can lose the track lock, so two merges may both read v1 and both try to
    publish v2. The exclusive rename lets exactly one: the other fails (its task retries and
    finds its round merged, or merges on top of v2), and v2 is the winner's, whole."""
    merge(job, [0])
    winner = CheckpointMeta(track="s", step=2, merged_shards=[0, 1], rounds=[])
    loser = CheckpointMeta(track="s", step=2, merged_shards=[0, 2], rounds=[])
    checkpoints.write_version(job.paths, "s", 2, {}, None, winner)
    with pytest.raises(FileExistsError):
        checkpoints.write_version(job.paths, "s", 2, {}, None, loser)
    latest = checkpoints.latest(job.paths, "s")
    assert latest.version == 2 and latest.meta.merged_shards == [0, 1]
    assert not list(job.paths.global_dir("s").glob(".*.tmp"))  # the loser left nothing


def scored_part(job, round_: int, part: int) -> None:
    """Part ``part`` of an on-policy round scored: a file and its verified sidecar."""
    from distillq.storage import cache
    from distillq.storage.layout import sidecar

    f = job.paths.onpolicy_scored("s", round_, part)
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_bytes(b"scored")
    fields = dict(samples=1, tokens=1, target_positions=1, seconds=1.0, tokens_per_s=1.0)
    stats = ShardStats(shard=round_, started_at=0.0, finished_at=1.0, **fields)
    cache.write_stats(sidecar(f), f, stats)


@pytest.fixture
def onpolicy_job(settings, make_spec, tiny_models):
    configure(settings)
    track = {
        "name": "s",
        "model": tiny_models["student"],
        "replicas": 2,
        "on_policy": {"fraction": 1.0},
    }
    spec = make_spec(n_records=40, shards=2, mode="hybrid", students=[track])
    return create_job(settings.storage, load_spec(spec))


def test_an_on_policy_round_samples_then_scores_then_trains_once(onpolicy_job, r):
    """advance queues the round's sampling (a task per part); the last part scored queues the
    training chord, once, however many score tasks end; after a failover that lost the chord,
    reconciling relaunches the round, and the round's finished parts queue it again."""
    job = onpolicy_job
    finish_shard(job, 0, finished_at=1.0)
    assert pipeline.advance(app, job, "s") == 0
    assert queued(r, "student") == [
        ("distillq.sample_part", [job.id, "s", 0, 0]),
        ("distillq.sample_part", [job.id, "s", 0, 1]),
    ]
    r.delete("student")
    scored_part(job, 0, 0)
    assert not pipeline.after_score(app, job, "s", 0)  # part 1 is not scored yet
    scored_part(job, 0, 1)
    assert pipeline.after_score(app, job, "s", 0)
    assert not pipeline.after_score(app, job, "s", 0)  # the other score task: queued once
    replicas = [("distillq.train_replica", [job.id, "s", 0, i]) for i in range(2)]
    assert queued(r, "student") == replicas
    # The primary died with the chord: nothing holds the round, storage owes it.
    r.delete("student")
    assert "round s/0" in reconcile.reconcile(app, job, reconcile.held_work(app, r))
    assert not job.paths.onpolicy_train_queued("s", 0).exists()
    assert [name for name, _ in queued(r, "student")] == ["distillq.sample_part"] * 2
    # The redelivered parts find their files and end with after_score: the chord again.
    assert pipeline.after_score(app, job, "s", 0)
    assert queued(r, "student")[-2:] == replicas
