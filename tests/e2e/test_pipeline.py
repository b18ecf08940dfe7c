"""Whole jobs on real Redis + real worker processes + tiny real models."""

from __future__ import annotations

import json
import time

import redis

from distillq.core.job.jobs import load_job
from distillq.storage import checkpoints, keys, records
from distillq.storage.atomic import read_json
from distillq.storage.report_records import Report
from tests.conftest import failpoints, run_cli
from tests.progress import Pulse, wait_for


def enqueue(settings, spec_path, *sets: str) -> str:
    args = ["enqueue", str(spec_path)]
    for s in sets:
        args += ["--set", s]
    res = run_cli(settings, *args)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip().splitlines()[-1]


def enqueue_medium(settings, make_spec, tiny_models, n_records: int = 300, shards: int = 6) -> str:
    """A job with the heavier teacher: its shards take seconds, so work can be watched, paused
    or killed while it runs."""
    return enqueue(
        settings,
        make_spec(n_records=n_records, shards=shards),
        f"teacher.model={tiny_models['medium_teacher']}",
    )


def test_three_shard_job_completes_with_both_workers(settings, make_spec, workers):
    workers.start("teacher", "teacher")
    workers.start("student", "student")
    job_id = enqueue(settings, make_spec())
    res = run_cli(settings, "wait", job_id, "--stall", "180")
    assert res.returncode == 0, res.stderr + workers.log("teacher") + workers.log("student")

    job = load_job(settings.storage, job_id)
    report = read_json(job.paths.report)
    assert records.read(Report, job.paths.report).students["s"].version == 3  # reads typed
    assert report["shards"] == 3
    assert report["students"]["s"]["version"] == 3  # one merge per round, no more
    rounds = checkpoints.latest(job.paths, "s").meta.rounds
    # Each round trained from the previous merge, never from stale weights.
    assert [r.replicas[0].start_version for r in rounds] == [0, 1, 2]
    assert report["teacher"]["eval_loss"] > 0 and report["students"]["s"]["eval_loss"] > 0
    assert (job.paths.final_dir("s") / "adapter" / "adapter_config.json").exists()
    assert (job.paths.final_dir("s") / "merged" / "config.json").exists()
    assert job.paths.report_png.stat().st_size > 10_000

    status = json.loads(run_cli(settings, "status", job_id, "--json").stdout)
    assert status["state"] == "done"
    assert [s["state"] for s in status["shards"]] == ["done"] * 3

    # What Redis holds of the finished job (its tasks' results, attempt counts) expires within
    # finished_expires, not result_expires: Redis does not grow with finished jobs.
    r = redis.Redis.from_url(settings.broker_url)
    results = list(r.scan_iter(match=keys.results_pattern(job_id)))
    assert len(results) >= 3 + 3  # the replicas' results, at least: their chords read them
    held = [*results, *r.scan_iter(match=keys.job_pattern(job_id))]
    wait_for(
        lambda: all(0 < r.ttl(k) <= settings.finished_expires for k in held),
        60,
        f"the finished job's keys to be let go: {[(k, r.ttl(k)) for k in held]}",
    )


def test_students_wait_in_their_queue_until_a_student_worker_starts(settings, make_spec, workers):
    workers.start("teacher", "teacher")
    job_id = enqueue(settings, make_spec())
    job = load_job(settings.storage, job_id)
    res = run_cli(settings, "wait", job_id, "--timeout", "20")
    assert res.returncode == 3  # not done: no student worker

    wait_for(lambda: all(job.paths.shard_stats(i).exists() for i in range(3)), 120, "the cache")
    r = redis.Redis.from_url(settings.broker_url)
    assert (
        r.llen("student") == 1
    )  # the track's first round (R = 1), waiting; later rounds follow merges
    assert checkpoints.latest(job.paths, "s") is None  # nothing trained yet
    assert not job.paths.round_dir("s", 0).exists()

    workers.start("student", "student")
    res = run_cli(settings, "wait", job_id, "--stall", "180")
    assert res.returncode == 0, res.stderr + workers.log("student")


def test_students_start_before_the_last_teacher_shard_is_done(
    settings, make_spec, workers, tiny_models, tmp_path
):
    workers.start("student", "student")
    job_id = enqueue_medium(settings, make_spec, tiny_models)
    # The last shard holds (a `pause` failpoint) until a student has stepped: on a busy machine
    # a whole teacher pass can otherwise end before a student's start-up, and what is tested is
    # that rounds start from finished shards, not which process wins a race.
    drill = tmp_path / "drill"
    env = failpoints(drill, "teacher_shard:5=pause")
    workers.start("teacher", "teacher", extra_env=env)
    # Live progress while it runs: a shard's samples/tokens, a replica's step/loss/throughput.
    from distillq.core.runtime import broker, live
    from distillq.storage import taskkeys

    job, r = (
        load_job(settings.storage, job_id),
        broker.client(settings.broker_url, settings.sentinel_master),
    )
    seen_shard, seen_replica = None, None
    pulse = Pulse(180)
    # The live entries themselves, read every 20 ms: a tiny teacher's shard runs for under a
    # second, and a whole `status` per poll on a busy machine could step over it.
    while not (seen_shard and seen_replica) and not job.paths.report.exists():
        pulse.check("a running shard and a running replica")
        for key, p in live.progress(r, job.id).items():
            kind = taskkeys.parse(key)
            if kind is not None and kind.kind == "teacher":
                seen_shard = seen_shard or p
            elif kind is not None and kind.kind == "replica":
                seen_replica = seen_replica or p
        time.sleep(0.02)
    for held in drill.glob("*.paused"):
        held.unlink()  # a student has stepped: the last shard may finish
    assert seen_shard and {"samples", "of", "tokens", "tokens_per_s"} <= set(seen_shard), seen_shard
    assert seen_replica and {"step", "steps", "loss", "ce", "kd"} <= set(seen_replica), seen_replica

    watch = run_cli(settings, "watch", job_id, timeout=None)  # the job moves: see `wait`
    assert watch.returncode == 0 and "6/6 shards" in watch.stdout and "6/6 rounds" in watch.stdout
    report = read_json(job.paths.report)
    first_student_step = report["students"]["s"]["first_step_at"]
    assert first_student_step < report["last_shard_done_at"]
    assert report["first_shard_done_at"] < first_student_step
