"""The Python API (`from distillq import Client`) drives whole jobs on real workers: a spec as a
dict, a callback that sees typed progress, pause and resume, the typed report; its errors are
the CLI's, type and line."""

from __future__ import annotations

import pytest
import yaml

from distillq import Client
from distillq.core.control.status import JobStatus
from distillq.errors import JobNotFound, SpecError, WaitTimeout
from tests.conftest import run_cli


def test_a_dict_spec_runs_to_its_report_with_a_callback_that_sees_progress(
    settings, make_spec, workers
):
    client = Client(settings.broker_url, settings.storage)
    workers.start("teacher,student", "both")
    spec = yaml.safe_load(make_spec().read_text())
    job = client.enqueue(spec)
    assert any("queued 3 teacher shards" in n for n in job.notes)

    seen: list[JobStatus] = []
    final = job.wait(timeout=600, on_update=seen.append, interval=0.2)
    assert final.state == "done" and seen[-1].state == "done"
    assert all(isinstance(st, JobStatus) for st in seen)
    # Progress, not one final frame: shards finished one by one, rounds merged one by one.
    shards_done = [sum(s.state == "done" for s in st.shards) for st in seen]
    versions = [st.tracks["s"].rounds_merged for st in seen]
    assert shards_done == sorted(shards_done) and len(set(shards_done)) >= 2, shards_done
    assert versions == sorted(versions) and versions[-1] == 3 and len(set(versions)) >= 2

    report = job.report()
    assert report.students["s"].version == 3 and report.students["s"].eval_loss is not None
    assert client.job(job.id).status().state == "done"  # any process, from the id alone
    assert {n.info.hostname for n in client.nodes()} == {"both@test"}
    assert job.id in [j.id for j in client.jobs()]


def test_pause_holds_a_job_and_resume_lets_it_finish(settings, make_spec, workers):
    client = Client(settings.broker_url, settings.storage)
    job = client.enqueue(make_spec(), max_records=40)
    assert any("first 40 of 60 records" in n for n in job.notes)
    job.pause()
    assert job.status().state == "paused"
    workers.start("teacher,student", "both")
    with pytest.raises(WaitTimeout, match=f"job {job.id} not done after 3 s \\(state paused\\)"):
        job.wait(timeout=3, interval=0.2)
    was, _ = job.resume()
    assert was == "paused"
    assert job.wait(stall=180, interval=0.5).state == "done"
    assert job.report().students["s"].version == 3


def test_the_api_raises_what_the_cli_prints(settings, make_spec):
    client = Client(settings.broker_url, settings.storage)
    with pytest.raises(JobNotFound) as missing:
        client.job("no-such-job")
    cli = run_cli(settings, "status", "no-such-job")
    assert cli.returncode == 1 and cli.stderr.strip() == f"distillq status: {missing.value}"

    spec = yaml.safe_load(make_spec().read_text())
    spec["students"][0]["lr"] = "fast"
    with pytest.raises(SpecError) as bad:
        client.enqueue(spec)
    path = make_spec()
    path.write_text(yaml.safe_dump(spec))
    cli = run_cli(settings, "enqueue", str(path))
    assert cli.returncode == 1 and cli.stderr.strip() == f"distillq enqueue: {bad.value}"
    assert "lr" in str(bad.value)
