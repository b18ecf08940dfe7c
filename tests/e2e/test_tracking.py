"""`report_to: [tensorboard, mlflow, trackio]`: a job's numbers in TensorBoard, MLflow and Trackio, written where
they are produced (the teacher task, each merge, finalize) by real workers, and read back by the
trackers themselves: TensorBoard's event-file reader, `tensorboard --logdir` answering over HTTP,
MLflow's client on its local file store, Trackio's reader on its SQLite store."""

from __future__ import annotations

import json
import os
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


def test_every_rounds_losses_for_every_track_are_in_each_tracker(
    settings, make_spec, workers, tmp_path, monkeypatch
):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    spec = make_spec(report_to=["tensorboard", "mlflow", "trackio"], shards=2)

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

    # Trackio: its own reader, in a process whose TRACKIO_DIR is the storage's (it reads the
    # variable once, at import).
    read = (
        "import json, sys; from trackio.sqlite_storage import SQLiteStorage as S; "
        "print(json.dumps({r: S.get_logs(sys.argv[1], r) for r in sys.argv[2:]}))"
    )
    env = {**os.environ, "TRACKIO_DIR": str(job.paths.trackio_dir)}
    out = subprocess.run(
        [sys.executable, "-c", read, job.id, *TRACKS, "teacher"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    logs = json.loads(out.stdout)
    for track in TRACKS:
        steps = sorted(row["step"] for row in logs[track] if "loss/mixed" in row)
        assert steps == sorted(e.step for e in scalars(track).Scalars("loss/mixed"))
        assert sum("heldout/loss" in row for row in logs[track]) == job.rounds(track)
    assert sum("teacher/cache_bytes" in row for row in logs["teacher"]) == job.n_shards

    # TensorBoard's own server reads the same files and serves the scalars.
    port = free_port()
    tb = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1",
         "--port", str(port), "--reload_interval", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/data/plugin/scalars/scalars?run=kd&tag=loss%2Fmixed"

        want = sorted(e.step for e in scalars("kd").Scalars("loss/mixed"))

        def fetch() -> list | None:
            """The served steps once they are all there: it loads a run's files one by one,
            a moment after it starts listening."""
            assert tb.poll() is None, "tensorboard exited"
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    steps = sorted(row[1] for row in json.loads(r.read()))
            except OSError:
                return None
            return steps if steps == want else None

        assert wait_for(fetch, 60, "tensorboard to serve every step of the kd run", every=0.5)
    finally:
        tb.terminate()
        tb.wait(10)
