"""`distillq pause`, `resume` and `cancel` on running jobs, with real workers."""

from __future__ import annotations

import time

from distillq.core.control.state import CancelWatch
from distillq.core.control.status import job_status
from distillq.core.job.jobs import load_job
from distillq.core.runtime import broker
from distillq.storage import checkpoints
from tests.conftest import failpoints, run_cli
from tests.e2e.test_faults import all_logs, assert_landed_once, wait_for
from tests.e2e.test_pipeline import enqueue_medium
from tests.progress import Pulse


def snapshot(job) -> dict:
    """What is done: each finished shard's mtime and the track's version."""
    shards = {
        i: job.paths.shard(i).stat().st_mtime_ns
        for i in range(job.n_shards)
        if job.paths.shard_stats(i).exists()
    }
    ckpt = checkpoints.latest(job.paths, "s")
    return {"shards": shards, "version": ckpt.version if ckpt else 0}


def idle(job, r) -> bool:
    st = job_status(job, r)
    track = st.tracks["s"]
    busy = any(s.state == "running" for s in st.shards) or track.running or track.merging
    # A task taken but not yet reporting (loading its model on a busy machine) shows no
    # progress yet; kombu's unacked hash holds it from delivery to ack.
    return not busy and r.hlen("unacked") == 0


def settled(job, r, quiet: float = 4.0, timeout: float = 120) -> dict:
    """Wait until nothing runs and nothing changes for ``quiet`` s (a round's merge may still
    land after a pause: it keeps work already done)."""
    pulse = Pulse(timeout)
    last, since = None, time.time()
    while True:
        pulse.check("the job to settle")
        now = snapshot(job) if idle(job, r) else None
        if now is None or now != last:
            last, since = now, time.time()
        elif time.time() - since >= quiet:
            return now
        time.sleep(0.2)


def test_pause_starts_nothing_new_and_resume_continues_where_it_stopped(
    settings, workers, make_spec, tiny_models
):
    workers.start("teacher", "teacher")
    workers.start("student", "student")
    job_id = enqueue_medium(settings, make_spec, tiny_models)
    job, r = (
        load_job(settings.storage, job_id),
        broker.client(settings.broker_url, settings.sentinel_master),
    )
    wait_for(lambda: job.paths.shard_stats(0).exists(), 180, "the first shard")
    res = run_cli(settings, "pause", job_id)
    assert res.returncode == 0 and "paused" in res.stdout, res.stderr
    before = settled(job, r)
    assert len(before["shards"]) < 6  # there is work left to hold back
    time.sleep(8)  # the queued teacher tasks reach the worker and are parked
    assert snapshot(job) == before
    assert job_status(job, r).state == "paused"
    assert "is paused, not started" in all_logs(workers)
    assert "resume" in run_cli(settings, "status", job_id).stdout

    res = run_cli(settings, "resume", job_id)
    assert res.returncode == 0 and "was paused" in res.stderr, res.stderr
    res = run_cli(settings, "wait", job_id, "--stall", "180")
    assert res.returncode == 0, res.stderr
    after = snapshot(job)
    # Nothing done before the pause was done again.
    assert all(after["shards"][i] == mtime for i, mtime in before["shards"].items())
    assert_landed_once(job)


def test_cancel_stops_running_work_and_says_so(settings, workers, make_spec, tiny_models, tmp_path):
    # One shard, held half written (its first progress report) until the cancel is in: on a
    # fast machine the whole shard took less than the cancel's 2 s look at storage.
    drill = tmp_path / "drill"
    workers.start("teacher", "teacher", extra_env=failpoints(drill, "teacher_progress:0=pause"))
    job_id = enqueue_medium(settings, make_spec, tiny_models, n_records=400, shards=1)
    job, r = (
        load_job(settings.storage, job_id),
        broker.client(settings.broker_url, settings.sentinel_master),
    )
    held = drill / "teacher_progress:0.paused"
    wait_for(held.exists, 180, "a shard in progress")
    assert any(s.state == "running" for s in job_status(job, r).shards)
    res = run_cli(settings, "cancel", job_id)
    assert res.returncode == 0 and "cancelled" in res.stdout, res.stderr
    time.sleep(CancelWatch(job).every + 0.5)  # the running task looks at storage this often
    held.unlink()
    res = run_cli(settings, "wait", job_id, "--stall", "180")
    assert res.returncode != 0 and "cancelled" in res.stderr
    done = settled(job, r)["shards"]
    time.sleep(4)
    assert snapshot(job)["shards"] == done == {}  # it stopped mid-shard
    assert not list(job.paths.root.rglob("*.tmp"))  # the interrupted shard left nothing
    assert "was cancelled" in all_logs(workers)
    status = run_cli(settings, "status", job_id, "--json")
    assert '"state": "cancelled"' in status.stdout
