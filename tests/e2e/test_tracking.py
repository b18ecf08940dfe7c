"""`report_to: [tensorboard, mlflow]`: a job's numbers in TensorBoard and MLflow, written where
they are produced (the teacher task, each merge, finalize) by real workers, and read back by the
trackers themselves: TensorBoard's event-file reader, `tensorboard --logdir` answering over HTTP,
and MLflow's client on its local file store."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import yaml

from distillq.core.job.jobs import load_job
from distillq.storage import checkpoints
from tests.conftest import run_cli
from tests.e2e.test_pipeline import enqueue
from tests.llama_server import free_port
from tests.progress import wait_for

TRACKS = ("kd", "ce")


def load_checkpoint_step(job, track: str) -> int:
    return checkpoints.latest(job.paths, track).meta.step


def test_every_rounds_losses_for_every_track_are_in_tensorboard_and_mlflow(
    settings, make_spec, workers, tmp_path, monkeypatch
):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    spec = make_spec(report_to=["tensorboard", "mlflow"], shards=2)

    raw = yaml.safe_load(spec.read_text())
    student = raw["students"][0]
    raw["students"] = [{**student, "name": "kd"}, {**student, "name": "ce", "loss": {"alpha": 1.0}}]
    spec.write_text(yaml.safe_dump(raw))
    workers.start("teacher,student", "both")
    job_id = enqueue(settings, spec)
    res = run_cli(settings, "wait", job_id, "--stall", "180")
    assert res.returncode == 0, res.stderr + workers.log("both")
    job = load_job(settings.storage, job_id)
    logdir = job.paths.tracking_dir / "tensorboard"

    def scalars(run: str) -> EventAccumulator:
        acc = EventAccumulator(str(logdir / run))
        acc.Reload()
        return acc

    for track in TRACKS:
        acc = scalars(track)
        tags = set(acc.Tags()["scalars"])
        assert {"loss/mixed", "loss/ce", "loss/kd", "train/lr", "train/tokens_per_s"} <= tags
        rounds = job.rounds(track)
        # One held-out point per merged round, and the training loss of every logged step.
        assert len(acc.Scalars("heldout/loss")) == rounds
        # Each merge writes its own event file (any node may log), so events come back in file
        # order: every step once, none missing from 1 to the track's last.
        steps = sorted(e.step for e in acc.Scalars("loss/mixed"))
        last = load_checkpoint_step(job, track)
        assert steps == sorted(set(steps)) and steps[-1] == last and len(steps) >= rounds
        assert len(acc.Scalars("train/lr")) == rounds
    teacher = scalars("teacher")
    assert len(teacher.Scalars("teacher/tokens_per_s")) == job.n_shards
    report = EventAccumulator(str(logdir / "report"))
    report.Reload()
    assert "report/text_summary" in report.Tags()["tensors"]
    # Node load from the heartbeats, logged by the tasks: one series per live node.
    assert {"rss_mb/both@test", "cpu_percent/both@test"} <= set(scalars("nodes").Tags()["scalars"])

    # MLflow: the same numbers, one experiment per job and one run per track.
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # the local store distillq writes
    ml = MlflowClient(tracking_uri=(job.paths.tracking_dir / "mlruns").as_uri())
    exp = ml.get_experiment_by_name(job.id)
    runs = {r.info.run_name: r for r in ml.search_runs([exp.experiment_id])}
    assert set(runs) == {*TRACKS, "teacher", "report", "nodes"}  # each made once
    for track in TRACKS:
        run_id = runs[track].info.run_id
        history = sorted(m.step for m in ml.get_metric_history(run_id, "loss/mixed"))
        assert history == sorted(e.step for e in scalars(track).Scalars("loss/mixed"))
        assert len(ml.get_metric_history(run_id, "heldout/loss")) == job.rounds(track)
    teacher_run = runs["teacher"].info.run_id
    assert len(ml.get_metric_history(teacher_run, "teacher/cache_bytes")) == job.n_shards
    report_md = ml.download_artifacts(runs["report"].info.run_id, "report.md", str(tmp_path))
    assert "held-out" in Path(report_md).read_text()

    # TensorBoard's own server reads the same files and serves the scalars.
    port = free_port()
    tb = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1",
         "--port", str(port), "--reload_interval", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/data/plugin/scalars/scalars?run=kd&tag=loss%2Fmixed"

        def fetch() -> list | None:
            assert tb.poll() is None, "tensorboard exited"
            try:  # it loads the runs a moment after it starts listening
                with urllib.request.urlopen(url, timeout=5) as r:
                    return json.loads(r.read()) or None
            except OSError:
                return None

        got = wait_for(fetch, 60, "tensorboard to serve the kd run", every=0.5)
        assert got and sorted(row[1] for row in got) == sorted(
            e.step for e in scalars("kd").Scalars("loss/mixed")
        )
    finally:
        tb.terminate()
        tb.wait(10)
