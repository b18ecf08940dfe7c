"""On-policy jobs on real workers: each round samples (student queue), scores (teacher
queue: a local teacher, and llama-cpp-python's server) and trains; a pool process killed in
any phase costs that one task, and the job ends with the weights of a run without a kill."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from distillq.core.job.jobs import Job, load_job
from distillq.core.runtime import broker
from distillq.core.targets.shard import Shard
from distillq.core.targets.topk import token_logprobs
from distillq.storage import cache, checkpoints, keys, records
from distillq.storage.layout import sidecar
from distillq.storage.report_records import Report
from tests.conftest import run_cli, write_jsonl
from tests.e2e.test_pipeline import enqueue
from tests.llama_server import SERVED_NAME, LlamaServer, serve_gguf

ON_POLICY = {"fraction": 0.5, "max_new_tokens": 12, "seed": 1}


def track(model: str, **over: object) -> dict:
    return {
        "name": "s",
        "model": model,
        "peft": {"method": "lora", "r": 4},
        "batch_size": 4,
        "lr": 5e-3,
        "replicas": 2,
        "on_policy": ON_POLICY,
        **over,
    }


def assert_rounds_on_storage(job: Job, parts: int = 2) -> None:
    """Every round's samples and scores are verified cache files; every round merged once."""
    for round_ in range(job.rounds("s")):
        for part in range(parts):
            for f in (
                job.paths.onpolicy_samples("s", round_, part),
                job.paths.onpolicy_scored("s", round_, part),
            ):
                assert cache.verified(f, sidecar(f)) is not None, f
    ckpt = checkpoints.latest(job.paths, "s")
    assert sorted(ckpt.meta.merged_shards) == list(range(job.rounds("s")))
    assert ckpt.version == job.rounds("s")


def wait(settings, job_id: str, workers, name: str) -> None:
    res = run_cli(settings, "wait", job_id, "--stall", "240")
    assert res.returncode == 0, res.stderr + workers.log(name)[-3000:]


def test_an_on_policy_job_survives_a_kill_in_each_phase_with_the_same_weights(
    settings, make_spec, tiny_models, workers, tmp_path
):
    spec = make_spec(
        n_records=48, shards=2, mode="hybrid", students=[track(tiny_models["student"])]
    )
    workers.start("teacher,student", "w")
    plain = load_job(settings.storage, enqueue(settings, spec))
    wait(settings, plain.id, workers, "w")
    assert_rounds_on_storage(plain)
    report = records.read(Report, plain.paths.report)
    got = report.students["s"].on_policy
    assert got is not None and got.teacher_logprob_after is not None
    assert got.rounds and got.rounds[0].student_text
    md = plain.paths.report_md.read_text()
    assert "On-policy" in md and "teacher log-prob" in md
    # `distillq show` reads a round's files like a teacher shard: the student's text, and the
    # teacher's scores of its tokens.
    with cache.CacheReader(plain.paths.onpolicy_scored("s", 1, 0)) as r:
        rid, text = r.record_id(0), r.generated(0)[1]
    shown = run_cli(
        settings, "show", plain.id, "--track", "s", "--round", "1", "--record", str(rid)
    )
    assert shown.returncode == 0, shown.stderr
    assert f"record {rid} (generated)" in shown.stdout and text[:20] in shown.stdout
    assert "first targets" in shown.stdout
    bad = run_cli(settings, "show", plain.id, "--round", "1", "--record", str(rid))
    assert bad.returncode != 0 and "add --track T" in bad.stderr
    workers.stop_all()

    once = tmp_path / "fired"
    once.mkdir()
    points = ["sample:s:1:0=crash", "score:s:1:1=crash", "replica:s:1:0=crash"]
    workers.start(
        "teacher,student",
        "killed",
        extra_env={"DISTILLQ_FAILPOINTS": ",".join(points), "DISTILLQ_FAILPOINTS_ONCE": str(once)},
    )
    killed = load_job(settings.storage, enqueue(settings, spec))
    wait(settings, killed.id, workers, "killed")
    r = broker.client(settings.broker_url, settings.sentinel_master)
    tasks = ("sample-s-00001-0", "score-s-00001-1", "replica-s-00001-0")
    for p, key in zip(points, tasks, strict=True):
        assert (once / p.split("=")[0]).exists(), p  # each kill happened
        assert int(r.get(keys.attempts(killed.id, key)) or 0) == 2, key  # redone once
    assert_rounds_on_storage(killed)
    want = checkpoints.latest(plain.paths, "s").params()
    have = checkpoints.latest(killed.paths, "s").params()
    for name in want:
        torch.testing.assert_close(have[name], want[name], rtol=1e-5, atol=1e-7)
    status = json.loads(run_cli(settings, "status", killed.id, "--json").stdout)
    assert status["state"] == "done"


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory) -> Iterator[LlamaServer]:
    root = tmp_path_factory.mktemp("served-onpolicy")
    gguf = serve_gguf(tiny_models["teacher"], root / "teacher-f32.gguf")
    with LlamaServer(gguf, root / "server.log") as s:
        yield s


def test_an_on_policy_job_with_a_served_teacher(
    settings, server, tiny_models, text_records, workers, tmp_path: Path
):
    spec = {
        "name": "served-onpolicy",
        "dataset": str(write_jsonl(tmp_path / "d.jsonl", text_records[:40])),
        "shards": 2,
        "eval_fraction": 0.1,
        "teacher": {"endpoint": server.url, "model": SERVED_NAME, "top_k": 8, "max_length": 96},
        "students": [track(tiny_models["student"], replicas=1, on_policy={**ON_POLICY, "fraction": 1.0})],
    }  # fmt: skip
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    workers.start("teacher", "teacher")
    workers.start("student", "student")
    job = load_job(settings.storage, enqueue(settings, path))
    wait(settings, job.id, workers, "teacher")
    assert_rounds_on_storage(job, parts=1)
    stats = cache.read_stats(sidecar(job.paths.onpolicy_scored("s", 0, 0)))
    # The server's top-k, then each position's own token (its log-prob where the server listed
    # it among the top-k: llama-cpp-python lists the prompt's own token with echo).
    assert stats.k == 8 + 1 and stats.source.startswith("endpoint")
    with Shard(job.paths.onpolicy_scored("s", 0, 0)) as r:
        b = r.batch_of(np.arange(len(r)))
        assert b.target_ids is not None and b.target_logprobs is not None
        assert (b.target_ids[:, -1] == b.padded.labels).all()
        _, found = token_logprobs(b.target_ids, b.target_logprobs, b.padded.labels)
        assert found.mean() > 0.99
    got = records.read(Report, job.paths.report).students["s"].on_policy
    assert got is not None and got.teacher_logprob_after is not None
