"""Modes, ensembles, nodes and resume, on real Redis + real workers."""

from __future__ import annotations

import json

import redis

from distillq.core.job.jobs import load_job
from distillq.core.targets.shard import Shard
from distillq.storage import cache, checkpoints
from distillq.storage.atomic import read_json
from tests.conftest import run_cli
from tests.e2e.test_pipeline import enqueue
from tests.progress import wait_for


def test_hybrid_mode_with_two_replicas_and_an_ensemble(settings, make_spec, workers, tiny_models):
    workers.start("teacher,student", "w1")
    workers.start("student,teacher", "w2")
    students = [
        {
            "name": "lora2",
            "model": tiny_models["student"],
            "peft": {"method": "lora", "r": 4},
            "replicas": 2,
            "batch_size": 4,
        },
        {
            "name": "full",
            "model": tiny_models["student"],
            "peft": {"method": "full"},
            "batch_size": 8,
            "loss": {"kind": "jsd", "alpha": 0.2},
        },
    ]
    job_id = enqueue(settings, make_spec(mode="hybrid", students=students))
    res = run_cli(settings, "wait", job_id, "--stall", "180")
    assert res.returncode == 0, res.stderr + workers.log("w1") + workers.log("w2")
    job = load_job(settings.storage, job_id)
    for track in ("lora2", "full"):
        ckpt = checkpoints.latest(job.paths, track)
        assert ckpt.version == 3 and sorted(ckpt.meta.merged_shards) == [0, 1, 2]
    rounds = checkpoints.latest(job.paths, "lora2").meta.rounds
    # Both replicas' deltas went into each merge, and both started from the last merge.
    starts = [[x.start_version for x in r.replicas] for r in rounds]
    assert starts == [[0, 0], [1, 1], [2, 2]]
    assert not (job.paths.track_dir("lora2") / "rounds").exists() or not any(
        (job.paths.track_dir("lora2") / "rounds").iterdir()
    )
    report = read_json(job.paths.report)
    assert set(report["students"]) == {"lora2", "full"}
    assert report["students"]["full"]["loss"]["kind"] == "jsd"


def test_data_parallel_trains_without_a_teacher(settings, make_spec, workers, tiny_models):
    workers.start("teacher,student", "w1")
    students = [
        {
            "name": "dp",
            "model": tiny_models["student"],
            "peft": {"method": "lora"},
            "replicas": 2,
            "batch_size": 4,
        }
    ]
    spec = make_spec(mode="data_parallel", students=students)
    import yaml

    raw = yaml.safe_load(spec.read_text())
    del raw["teacher"]
    spec.write_text(yaml.safe_dump(raw))
    job_id = enqueue(settings, spec)
    res = run_cli(settings, "wait", job_id, "--stall", "180")
    assert res.returncode == 0, res.stderr + workers.log("w1")
    job = load_job(settings.storage, job_id)
    with Shard(job.paths.shard(0)) as r:
        assert r.k == 0 and len(r.positions) > 0  # tokens and target positions, no teacher targets
    report = read_json(job.paths.report)
    assert report["teacher"] is None and report["students"]["dp"]["eval_loss"] > 0


def test_nodes_lists_each_worker_with_its_resources(settings, workers):
    workers.start("teacher", "tw")
    workers.start("student", "sw")
    res = run_cli(settings, "nodes", "--json")
    assert res.returncode == 0, res.stderr
    nodes = {n["hostname"]: n for n in json.loads(res.stdout)}
    assert nodes["tw@test"]["queues"] == ["teacher"] and nodes["sw@test"]["queues"] == ["student"]
    assert nodes["tw@test"]["cpus"] >= 1 and nodes["tw@test"]["ram_gb"] > 0
    # what each node uses now, from its heartbeat: the worker and its pool child hold a
    # Python with Celery loaded, so well over 50 MB each
    load = nodes["tw@test"]["load"]
    assert load["rss_mb"] > 100 and load["cpu_percent"] >= 0 and load["gpu_used_mb"] == []
    table = run_cli(settings, "nodes").stdout
    assert "cpu now" in table and "rss" in table


def test_resume_finishes_a_job_from_storage_after_redis_is_wiped(settings, make_spec, workers):
    workers.start("teacher", "teacher")
    job_id = enqueue(settings, make_spec())
    job = load_job(settings.storage, job_id)
    wait_for(job.paths.shard_stats(0).exists, 120, "the first shard")
    redis.Redis.from_url(settings.broker_url).flushall()  # queues, chords, results: gone
    workers.start("student", "student")
    res = run_cli(settings, "resume", job_id)
    assert res.returncode == 0, res.stderr
    assert run_cli(settings, "wait", job_id, "--stall", "180").returncode == 0
    for i in range(3):
        assert cache.read_stats(job.paths.shard_stats(i)).shard == i
    assert checkpoints.latest(job.paths, "s").version == 3
