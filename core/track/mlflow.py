"""MLflow in its local mode: a file store under the job's storage (``tracking/mlruns``), one
experiment per job and one run per track, or the server ``MLFLOW_TRACKING_URI`` names.

The file store is what fits distillq's nodes: plain files on the shared storage, each metric
an appended line, so a merge on one node and a teacher shard on another write without a
server between them (MLflow keeps that store in maintenance mode; we opt in to it, a database
store would need one writer). ``mlflow ui --backend-store-uri <that dir>`` shows it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

from distillq.core.track.tracker import Rows


class Mlflow:
    name = "mlflow"

    def __init__(self, root: Path, experiment: str) -> None:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        self.root = root
        self.uri = os.environ.get("MLFLOW_TRACKING_URI") or (root / "mlruns").as_uri()
        self.client: Any = MlflowClient(tracking_uri=self.uri)
        self.experiment = experiment

    def _run_id(self, run: str) -> str:
        """The run named ``run`` in the job's experiment, made once: the lock stops two nodes
        that log their first values at once from making two runs of one name."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "mlflow.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            exp = self.client.get_experiment_by_name(self.experiment)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(self.experiment)
            found = self.client.search_runs(
                [exp_id], filter_string=f"tags.`mlflow.runName` = '{run}'", max_results=1
            )
            if found:
                return str(found[0].info.run_id)
            return str(self.client.create_run(exp_id, run_name=run).info.run_id)

    def scalars(self, run: str, rows: Rows) -> None:
        from mlflow.entities import Metric

        run_id, now = self._run_id(run), _millis()
        metrics = [
            Metric(k, float(v), now, step) for step, values in rows for k, v in values.items()
        ]
        self.client.log_batch(run_id, metrics=metrics)

    def text(self, run: str, tag: str, text: str, step: int = 0) -> None:
        self.client.log_text(self._run_id(run), text, f"{tag}.md")


def _millis() -> int:
    import time

    return int(time.time() * 1000)
