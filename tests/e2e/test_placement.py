"""A mixed cluster works as one: a worker drains its queues in its -Q order, and work goes
only to nodes that can load its models."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from distillq.core.job.jobs import load_job
from distillq.core.runtime import broker
from distillq.storage import cache, checkpoints, keys
from tests.conftest import run_cli
from tests.e2e.test_pipeline import enqueue


def _until(what: str, check, progress, stall: float = 120.0) -> None:
    """Wait for ``check()``; fail only when ``progress()`` has not changed for ``stall`` s."""
    last, moved = progress(), time.time()
    while not check():
        now = progress()
        if now != last:
            last, moved = now, time.time()
        assert time.time() - moved < stall, f"no progress for {stall:.0f} s waiting for {what}"
        time.sleep(0.3)


@pytest.mark.parametrize("order", ["teacher,student", "student,teacher"])
def test_a_worker_drains_its_queues_in_its_own_order(order, settings, make_spec, workers):
    r = broker.client(settings.broker_url, settings.sentinel_master)
    track = {"peft": {"method": "lora", "r": 4}, "batch_size": 8, "replicas": 2}
    student_model = yaml.safe_load(make_spec().read_text())["students"][0]["model"]
    two_tracks = [{"name": n, "model": student_model, **track} for n in ("a", "b")]

    # Job 1: its shards done by a teacher-only worker, so its student tasks wait in `student`.
    teacher_only = workers.start("teacher", "teacher-only")
    first = load_job(settings.storage, enqueue(settings, make_spec(students=two_tracks)))
    _until(
        "job 1's teacher work",
        lambda: (
            all(first.paths.shard_stats(i).exists() for i in range(first.n_shards))
            and first.paths.teacher_eval.exists()
            and r.llen("student") == 4
        ),  # two tracks, two replicas each: every first round queued
        lambda: sum(first.paths.shard_stats(i).exists() for i in range(first.n_shards)),
    )
    from distillq.workers.launch import stop_process_group

    stop_process_group(teacher_only)
    # Job 2: nobody listens to `teacher` now, so all its teacher tasks wait there.
    second = load_job(settings.storage, enqueue(settings, make_spec()))
    assert r.llen("teacher") == second.n_shards + 1  # its shards and its teacher eval

    workers.start(order, "both")

    def merged_first_rounds() -> int:
        return sum(checkpoints.latest(first.paths, t) is not None for t in ("a", "b"))

    def shards_done() -> int:
        return sum(second.paths.shard_stats(i).exists() for i in range(second.n_shards))

    # Only the start of each job's work is compared: stop once it is known, not at the end.
    need = second.n_shards if order == "teacher,student" else 1
    _until(
        "job 2's shards and job 1's first rounds",
        lambda: shards_done() >= need and merged_first_rounds() == 2,
        lambda: (shards_done(), merged_first_rounds(), *checkpoints.versions(first.paths, "a")),
        stall=300,
    )
    shard_starts = [
        cache.read_stats(second.paths.shard_stats(i)).started_at
        for i in range(second.n_shards)
        if second.paths.shard_stats(i).exists()
    ]
    first_round = [checkpoints.latest(first.paths, t).meta.rounds[0].replicas for t in ("a", "b")]
    replica_starts = [rep.started_at for reps in first_round for rep in reps]
    assert len(replica_starts) == 4
    if order == "teacher,student":
        assert max(shard_starts) < min(replica_starts)  # every teacher task before any student task
    else:
        assert max(replica_starts) < min(shard_starts)  # the queued student work first


def _hidden(path: str):
    """A preexec_fn that gives the child a mount namespace where ``path`` is an empty tmpfs:
    a node on which the model directory is not mounted."""
    import ctypes

    def pre() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        clone_newns, ms_rec, ms_private = 0x00020000, 16384, 1 << 18
        if libc.unshare(clone_newns) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
        if libc.mount(b"none", b"/", None, ms_rec | ms_private, None) != 0:
            raise OSError(ctypes.get_errno(), "make / private")
        if libc.mount(b"tmpfs", path.encode(), b"tmpfs", 0, None) != 0:
            raise OSError(ctypes.get_errno(), f"mount tmpfs on {path}")

    return pre


def _can_hide(tmp_path) -> bool:
    import subprocess

    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "x").write_text("x")
    res = subprocess.run(["ls", str(probe)], preexec_fn=_hidden(str(probe)), capture_output=True)
    return res.returncode == 0 and not res.stdout.strip()


def test_tasks_go_only_to_nodes_that_can_load_their_models(
    settings, make_spec, workers, tiny_models, tmp_path
):
    if not _can_hide(tmp_path):
        pytest.skip("this machine refuses mount namespaces (unshare CLONE_NEWNS)")
    models_root = str(Path(tiny_models["teacher"]).parent)
    blind = workers.start("teacher,student", "blind", preexec_fn=_hidden(models_root))
    # Alone, the blind node fails the job with the sentence that says why, without attempts.
    job_id = enqueue(settings, make_spec())
    res = run_cli(settings, "wait", job_id, "--stall", "180")
    assert res.returncode == 1
    status = run_cli(settings, "status", job_id, "--json").stdout
    assert (
        f"no registered node can load teacher {tiny_models['teacher']} (1 node(s) cannot)" in status
    )

    # With a node that can: every task lands there and the job completes.
    workers.start("teacher,student", "able")
    job_id = enqueue(settings, make_spec())
    res = run_cli(settings, "wait", job_id, "--stall", "180")
    assert res.returncode == 0, res.stderr + workers.log("blind") + workers.log("able")
    assert blind.poll() is None
    job = load_job(settings.storage, job_id)
    assert not list(job.paths.failures_dir.glob("*.json"))
    able_log = (workers.logs / "able.log").read_text()
    blind_log = (workers.logs / "blind.log").read_text()
    for task in ("teacher_shard", "teacher_eval", "train_replica", "merge_round", "finalize"):
        assert f"distillq.{task}[" in able_log and "succeeded" in able_log
    assert " succeeded in " not in blind_log  # it ran nothing
    assert "cannot load" in blind_log and "handing it back" in blind_log
    # hand-backs cost no attempt: each handed-back task ran once, on the able node
    r = broker.client(settings.broker_url, settings.sentinel_master)
    handed = [k.decode().rsplit(":", 1)[1] for k in r.scan_iter(keys.handbacks(job_id, "*"))]
    assert handed  # the blind node was waiting first, so it was offered work first
    for task in handed:
        assert int(r.get(keys.attempts(job_id, task)) or 0) == 1, task


def test_a_replica_killed_mid_round_resumes_from_its_checkpoint(
    settings, make_spec, workers, tmp_path
):
    """SIGKILL of the pool process mid-replica: the redelivered replica continues from its last
    in-round checkpoint (at most checkpoint_every_steps redone) and the job's final weights
    equal those of the same job run without a kill."""
    every, kill_at = 2, 5
    track = {
        "name": "s",
        "peft": {"method": "lora", "r": 4},
        "batch_size": 4,
        "epochs": 2,
        "checkpoint_every_steps": every,
    }
    model = yaml.safe_load(make_spec().read_text())["students"][0]["model"]
    spec = make_spec(n_records=40, shards=1, students=[{**track, "model": model}])
    once = tmp_path / "fired"
    once.mkdir()
    workers.start("teacher,student", "w")
    plain = load_job(settings.storage, enqueue(settings, spec))
    assert run_cli(settings, "wait", plain.id, "--stall", "180").returncode == 0
    workers.stop_all()

    workers.start(
        "teacher,student",
        "killed",
        extra_env={
            "DISTILLQ_FAILPOINTS": f"replica_step:s:{kill_at}=crash",
            "DISTILLQ_FAILPOINTS_ONCE": str(once),
        },
    )
    killed = load_job(settings.storage, enqueue(settings, spec))
    res = run_cli(settings, "wait", killed.id, "--stall", "180")
    assert res.returncode == 0, res.stderr + workers.log("killed")
    assert (once / f"replica_step:s:{kill_at}").exists()  # the kill happened
    rep = checkpoints.latest(killed.paths, "s").meta.rounds[0].replicas[0]
    assert rep.resumed_from == kill_at // every * every  # continued from its checkpoint
    assert kill_at - rep.resumed_from <= every
    want = checkpoints.latest(plain.paths, "s").params()
    got = checkpoints.latest(killed.paths, "s").params()
    import torch

    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7)
    assert not killed.paths.round_dir("s", 0).exists()  # merged: its checkpoints are gone


def test_a_node_that_does_not_see_the_storage_hands_work_back_and_status_says_why(
    settings, workers, make_spec, tmp_path
):
    """DISTILLQ_STORAGE unset (or another mount) on one node: its tasks are not failed (that
    would lose them, and the failure could not even be recorded where the job is); the node
    says why where `status` shows it and hands them back to a node that sees the job."""
    from tests.e2e.test_faults import assert_landed_once, wait_for

    elsewhere = tmp_path / "not-the-shared-storage"
    workers.start("teacher", "blind", extra_env={"DISTILLQ_STORAGE": str(elsewhere)})
    workers.start("student", "student")
    job_id = enqueue(settings, make_spec(n_records=90, shards=3))
    line = (
        f"1 node(s) do not see this job (blind@test): set DISTILLQ_STORAGE there to "
        f"{settings.storage}, the storage it was enqueued on"
    )
    wait_for(lambda: line in run_cli(settings, "status", job_id).stdout, 120, "status to say so")
    workers.start("teacher", "teacher")
    res = run_cli(settings, "wait", job_id, "--stall", "180")
    assert res.returncode == 0, res.stderr + workers.log("blind")
    assert_landed_once(load_job(settings.storage, job_id))
    assert "does not see job" in workers.log("blind")
    assert not (elsewhere / "jobs").exists()  # nothing written where the job is not
