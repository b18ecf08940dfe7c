"""A task knows its own key from its own parameters, and a failure is recorded or logged."""

from __future__ import annotations

import logging

import pytest

from distillq.core.runtime.settings import Settings
from distillq.storage import records, taskkeys
from distillq.storage.records import FailureRecord
from distillq.tasks.celery_app import app, configure
from tests.conftest import job_with_cache


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_models, text_records):
    spec = {
        "name": "tasks",
        "shards": 1,
        "eval_fraction": 0.0,
        "students": [{"name": "s", "model": tiny_models["student"]}],
        "mode": "data_parallel",
    }
    return job_with_cache(tmp_path_factory.mktemp("tasks"), text_records[:12], spec)


@pytest.fixture
def configured(job):
    configure(Settings(broker_url="redis://127.0.0.1:1/0", storage=job.paths.root.parents[1]))


def test_each_task_names_its_work_from_its_own_arguments():
    import distillq.tasks.student
    import distillq.tasks.teacher  # noqa: F401  (registers the tasks)

    cases = {
        "distillq.teacher_shard": (("j", 3), taskkeys.teacher(3)),
        "distillq.teacher_eval": (("j",), taskkeys.TEACHER_EVAL),
        "distillq.train_replica": (("j", "kd", 3, 1), taskkeys.replica("kd", 3, 1)),
        "distillq.merge_round": (([], "j", "kd", 3), taskkeys.merge("kd", 3)),
        "distillq.finalize": (("j",), taskkeys.FINALIZE),
    }
    for name, (args, key) in cases.items():
        assert app.tasks[name].job_and_key(args, {}) == ("j", key), name
    # keyword arguments bind the same way
    assert app.tasks["distillq.train_replica"].job_and_key(
        (), {"job_id": "j", "track": "kd", "shard": 3, "replica": 1}
    ) == ("j", taskkeys.replica("kd", 3, 1))


def test_a_failure_is_recorded_under_the_task_key(job, configured):
    import distillq.tasks.student  # noqa: F401  (registers merge_round, when this test runs alone)

    task = app.tasks["distillq.merge_round"]
    task.on_failure(ValueError("boom"), "tid-1", ([{}], job.id, "s", 0), {}, None)
    rec = records.read(FailureRecord, job.paths.failure("merge-s-00000"))
    assert rec.error == "ValueError: boom" and rec.task_id == "tid-1"
    assert rec.args == [job.id, "s", 0]


def test_a_failure_that_cannot_be_recorded_is_logged_not_swallowed(configured, caplog):
    task = app.tasks["distillq.teacher_shard"]
    with caplog.at_level(logging.ERROR, logger="distillq.tasks.base"):
        task.on_failure(RuntimeError("disk on fire"), "tid-2", ("no-such-job", 0), {}, None)
    assert "could not be written" in caplog.text and "disk on fire" in caplog.text
