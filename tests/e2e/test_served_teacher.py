"""A teacher that is already served: llama-cpp-python's OpenAI-compatible server, real, with
the GGUF of the tests' teacher. Its cache must agree with the local teacher's; faults on the
way (429s, stalls, a killed server, a wrong key) must cost retries, never a half-written shard.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from distillq.core import stages
from distillq.core.job.jobs import load_job
from distillq.core.job.models import load_tokenizer
from distillq.core.targets.shard import Shard
from distillq.core.teacher.dialects import TokenTable
from distillq.storage import cache
from tests.conftest import job_with_cache, run_cli, write_jsonl
from tests.e2e.test_pipeline import enqueue
from tests.llama_server import SERVED_NAME, FaultProxy, LlamaServer, serve_gguf
from tests.progress import wait_for

KEY_ENV = "DISTILLQ_TEST_TEACHER_KEY"
KEY = "sk-test-3f9a1c"


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory) -> Iterator[LlamaServer]:
    root = tmp_path_factory.mktemp("served")
    gguf = serve_gguf(tiny_models["teacher"], root / "teacher-f32.gguf")
    with LlamaServer(gguf, root / "server.log", api_key=KEY) as s:
        yield s


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


def served_teacher(url: str, **over) -> dict:
    return {
        "endpoint": url,
        "model": SERVED_NAME,
        "api_key_env": KEY_ENV,
        "top_k": 16,
        "max_length": 96,
        "max_concurrent": 2,
        **over,
    }


def spec_dict(tiny_models, teacher: dict, shards: int = 1, eval_fraction: float = 0.0) -> dict:
    return {
        "name": "served",
        "shards": shards,
        "eval_fraction": eval_fraction,
        "teacher": teacher,
        "students": [
            {"name": "s", "model": tiny_models["student"], "peft": {"method": "lora", "r": 4},
             "batch_size": 8}
        ],
    }  # fmt: skip


def start_and_await_first_shard(settings, workers, spec: Path) -> tuple[str, Any]:
    """Teacher and student workers, the job enqueued; returns once shard 0 is written."""
    workers.start("teacher", "teacher")
    workers.start("student", "student")
    job_id = enqueue(settings, spec)
    job = load_job(settings.storage, job_id)
    wait_for(
        lambda: cache.verified(job.paths.shard(0), job.paths.shard_stats(0)), 180, "shard 0", 0.05
    )
    return job_id, job


def test_served_cache_agrees_with_the_local_teacher(server, tiny_models, text_records, tmp_path):
    records = text_records[:12]
    (tmp_path / "local").mkdir()
    (tmp_path / "served").mkdir()
    local = job_with_cache(
        tmp_path / "local",
        records,
        spec_dict(
            tiny_models,
            {"model": tiny_models["teacher"], "top_k": 16, "max_length": 96, "dtype": "float32"},
        ),
    )
    served = job_with_cache(
        tmp_path / "served", records, spec_dict(tiny_models, served_teacher(server.url))
    )
    assert served.info.teacher_dialect == "llama_cpp"  # auto, from the server's /models
    assert KEY not in served.paths.spec.read_text()
    stats = cache.read_stats(served.paths.shard_stats(0))
    assert stats.source.startswith("endpoint llama_cpp")
    assert stats.targets == {"scored": len(records)}
    # Echo never gives position 0 (OpenAI's null first entry): text records train it with CE.
    assert stats.fallback_positions == len(records)

    assert_agrees(local, served, tiny_models["teacher"])


def assert_agrees(local: Any, served: Any, tokenizer: str) -> None:
    """Every top-k entry of the local teacher's cache is in the served one, within 1e-2."""
    table = TokenTable(load_tokenizer(tokenizer))
    a, b = Shard(local.paths.shard(0)), Shard(served.paths.shard(0))
    assert np.array_equal(a.input_ids, b.input_ids)
    assert np.array_equal(a.positions, b.positions)
    la, lb = a.batch(0, len(a)), b.batch(0, len(b))
    checked = skipped = 0
    worst = 0.0
    for row in range(len(la.target_ids)):
        served_row = {
            t: v
            for t, v in zip(lb.target_ids[row], lb.target_logprobs[row], strict=True)
            if np.isfinite(v)  # unfilled slots repeat an id at −inf
        }
        if list(served_row.values()) == [0.0]:
            continue  # position 0: no distribution from echo, CE on the token (counted above)
        kth = la.target_logprobs[row, -1]
        for tid, lp in zip(la.target_ids[row], la.target_logprobs[row], strict=True):
            # Texts several ids share come back as one key and are dropped (dialects.py);
            # an entry tied with the k-th may fall either side of the cut.
            if table.pieces[tid] not in table.id_of or abs(lp - kth) < 1e-3:
                skipped += 1
                continue
            assert tid in served_row, (
                f"row {row}: token {tid} ({lp:.3f}) missing from the server's top-k"
            )
            worst = max(worst, abs(float(served_row[tid]) - float(lp)))
            checked += 1
    print(f"agreement: {checked} entries checked, {skipped} skipped, max |Δ log-prob| {worst:.2e}")
    assert checked > 0.8 * (checked + skipped)
    assert worst <= 1e-2


def test_a_served_teacher_without_bos_scores_like_the_local_one(text_records, tmp_path):
    """GPT-2-style: a byte-level BPE tokenizer with no BOS token (GPT-2, Qwen2, SmolLM2). The
    GGUF then gets llama.cpp's default BOS id, a real token here, which llama-cpp-python's
    echo leaves out of its list (and strips when a record starts with it)."""
    from tests.tiny_arch import save_tiny_arch

    teacher = str(save_tiny_arch(tmp_path / "nobos", "llama", 0, tied=False, no_bos=True))
    assert load_tokenizer(teacher).bos_token_id is None
    gguf = serve_gguf(teacher, tmp_path / "nobos-f32.gguf")
    records = text_records[:12]
    (tmp_path / "local").mkdir()
    (tmp_path / "served").mkdir()
    shape = {"top_k": 16, "max_length": 96}
    spec = {"name": "nb", "shards": 1, "eval_fraction": 0.0,
            "students": [{"name": "s", "model": teacher}]}  # fmt: skip
    local = job_with_cache(
        tmp_path / "local",
        records,
        {**spec, "teacher": {"model": teacher, "dtype": "float32", **shape}},
    )
    with LlamaServer(gguf, tmp_path / "server.log") as s:
        served_spec = {"endpoint": s.url, "model": SERVED_NAME, "tokenizer": teacher, **shape}
        served = job_with_cache(tmp_path / "served", records, {**spec, "teacher": served_spec})
    stats = cache.read_stats(served.paths.shard_stats(0))
    assert stats.targets == {"scored": len(records)}
    assert stats.fallback_positions < 3 * len(records)  # position 0, and the odd skipped id
    assert_agrees(local, served, teacher)


def test_a_wrong_key_is_one_line_and_nothing_is_queued(server, settings, make_spec, monkeypatch):
    import redis

    monkeypatch.setenv(KEY_ENV, "sk-wrong")
    spec = make_spec(teacher=served_teacher(server.url))
    res = run_cli(settings, "enqueue", str(spec))
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert server.url in lines[0] and "API key" in lines[0] and KEY_ENV in lines[0]
    assert "sk-wrong" not in res.stderr + res.stdout
    assert not (settings.storage / "jobs").exists() or not any(
        (settings.storage / "jobs").iterdir()
    )
    assert redis.Redis.from_url(settings.broker_url).dbsize() == 0


def test_an_unreachable_or_wrong_model_endpoint_is_refused_at_enqueue(settings, make_spec, server):
    from tests.llama_server import free_port

    dead = f"http://127.0.0.1:{free_port()}/v1"
    res = run_cli(settings, "enqueue", str(make_spec(teacher=served_teacher(dead))))
    assert res.returncode != 0 and dead in res.stderr and "start the server" in res.stderr
    res = run_cli(
        settings, "enqueue", str(make_spec(teacher=served_teacher(server.url, model="nope")))
    )
    assert res.returncode != 0 and "does not serve model 'nope'" in res.stderr
    assert f"'{SERVED_NAME}'" in res.stderr


def test_a_served_job_rides_out_429s_stalls_and_a_server_restart(
    server, settings, make_spec, workers
):
    """Real workers, the server behind a proxy that answers every 4th request 429 and stalls
    every 9th past the client's timeout; mid-job the server is killed, then restarted."""
    with FaultProxy(server.url, fail_every=4, stall_every=9, stall_s=2.5) as proxy:
        teacher = served_teacher(proxy.url, timeout_s=1.0, retries=40, retry_budget_s=120)
        spec = make_spec(n_records=48, shards=3, teacher=teacher)
        job_id, job = start_and_await_first_shard(settings, workers, spec)
        server.kill()  # while the other shards are in flight
        seen_error = ""
        down_until = time.time() + 4
        while time.time() < down_until:
            res = run_cli(settings, "status", job_id)
            if "last error" in res.stdout:
                seen_error = res.stdout
            time.sleep(0.5)
        server.start()
        res = run_cli(settings, "wait", job_id, "--stall", "180")
        assert res.returncode == 0, res.stderr + workers.log("teacher") + workers.log("student")
    total: dict[str, int] = {}
    for shard in range(job.n_shards):
        st = cache.verified(job.paths.shard(shard), job.paths.shard_stats(shard))
        assert st is not None  # every shard whole and checked against its sha256
        assert st.samples == len(job.split.shard_ids(shard))  # nothing lost on the way
        assert st.endpoint is not None  # a served shard records what its pool met
        for kind, n in st.endpoint.by_status.items():
            total[kind] = total.get(kind, 0) + n
    assert total.get("429", 0) > 0 and total.get("timeout", 0) > 0, total
    assert proxy.injected["429"] > 0 and proxy.injected["stall"] > 0
    # While the server was down, status named the endpoint and what failed.
    assert proxy.url in seen_error, seen_error
    assert KEY not in job.paths.spec.read_text()
    assert KEY not in workers.log("teacher") + run_cli(settings, "status", job_id, "--json").stdout
    print(f"retried by kind: {total}; injected: {proxy.injected}")


def prompt_only(text_records: list[dict], n: int) -> list[dict]:
    """Prompts with no response: half plain prompts, half chats that end in a user turn."""
    out: list[dict] = []
    for i, r in enumerate(text_records[:n]):
        head = r["text"][:80]
        out.append({"prompt": head} if i % 2 else {"messages": [{"role": "user", "content": head}]})
    return out


@pytest.mark.parametrize("where", ["local", "local-sampled", "served"])
def test_prompt_only_data_runs_end_to_end(
    where, server, settings, tiny_models, text_records, workers, tmp_path
):
    """A teacher writes the responses, locally (top-k or sampled targets) or served."""
    gen = {"max_new_tokens": 24, "temperature": 0.8, "top_p": 0.95, "seed": 7}
    local = {"model": tiny_models["teacher"], "max_length": 96, "generate": gen}
    teacher = {
        "local": {**local, "top_k": 16},
        "local-sampled": {**local, "target_method": "sampled", "samples": 8},
        "served": served_teacher(server.url, generate=gen),
    }[where]
    spec = {
        **spec_dict(tiny_models, teacher, shards=2, eval_fraction=0.15),
        "dataset": str(write_jsonl(tmp_path / "prompts.jsonl", prompt_only(text_records, 30))),
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    workers.start("teacher,student", "both")
    job_id = enqueue(settings, tmp_path / "job.yaml")
    res = run_cli(settings, "wait", job_id, "--stall", "180")
    assert res.returncode == 0, res.stderr + workers.log("both")
    job = load_job(settings.storage, job_id)

    st = cache.read_stats(job.paths.shard_stats(0))
    assert st.targets == {"generated": st.samples} and st.samples > 0
    with Shard(job.paths.shard(0)) as r:
        texts = [r.generated(j) for j in range(len(r))]
        rid = r.record_id(1)
        first = (r.record_ids().tolist(), [t for _, t in texts], r.batch(0, len(r)))
    assert all(kind == 1 and text.strip() for kind, text in texts)
    # A person can read what the student is taught.
    shown = run_cli(settings, "show", job_id, "--shard", "0", "--record", str(rid))
    assert shown.returncode == 0, shown.stderr
    assert texts[1][1].strip()[:20] in shown.stdout and "(generated)" in shown.stdout
    # The held-out slice is the teacher's own responses, and every student was measured on it.
    report = json.loads(run_cli(settings, "report", job_id, "--json").stdout)
    assert report["eval_samples"] > 0
    targets = "tokens drawn from its distribution" if where == "local-sampled" else "top-k"
    assert f"responses the teacher wrote, with its {targets}" in job.paths.report_md.read_text()
    ev = report["students"]["s"]["eval_loss"]
    assert ev is not None and ev == ev  # a number, not NaN

    # A retried shard draws the same text: regenerate shard 0 here and compare.
    for f in (job.paths.shard(0), job.paths.shard_stats(0)):
        f.rename(f.with_suffix(f.suffix + ".first"))
    stages.teacher_shard(job, 0)
    with Shard(job.paths.shard(0)) as r:
        again = (
            r.record_ids().tolist(),
            [r.generated(j)[1] for j in range(len(r))],
            r.batch(0, len(r)),
        )
    assert again[0] == first[0] and again[1] == first[1]
    assert np.array_equal(again[2].target_ids, first[2].target_ids)
    if where != "served":  # bit-identical; a server's float path may differ in the last bits
        assert np.array_equal(again[2].target_logprobs, first[2].target_logprobs)
    if where == "local-sampled":  # the same draws, and their counts make weights summing to 1
        assert first[2].target_weights is not None and again[2].target_weights is not None
        assert np.array_equal(again[2].target_weights, first[2].target_weights)
        np.testing.assert_allclose(first[2].target_weights.sum(1), 1.0, rtol=1e-6)


def test_a_server_that_stays_down_fails_its_shards_after_retries_and_resume_finishes(
    server, settings, make_spec, workers
):
    """The pool gives up (few retries here), the task retry path tries again with back-off
    and stops at the attempt cap; written shards stay; with the server back, resume finishes."""
    teacher = served_teacher(server.url, retries=2, retry_budget_s=5)
    # Two shards: each shard left runs a retry chain to the attempt cap (about 20 s).
    spec = make_spec(n_records=40, shards=2, teacher=teacher)
    job_id, job = start_and_await_first_shard(settings, workers, spec)
    server.kill()
    try:
        res = run_cli(settings, "wait", job_id, "--stall", "180")
        assert res.returncode != 0
        status = run_cli(settings, "status", job_id).stdout
        assert "FAILED teacher-" in status and "EndpointDown" in status, status
        assert "retrying" in workers.log("teacher")  # went through the task retry path
        assert cache.verified(job.paths.shard(0), job.paths.shard_stats(0)) is not None
        # Every retry chain ends at the attempt cap, with a failure record each (resuming
        # before the last of them ends would let its late failure fail the resumed job).
        keys = [f"teacher-{i:05d}" for i in range(1, job.n_shards)] + ["teacher-eval"]
        wait_for(lambda: all(job.paths.failure(k).exists() for k in keys), 180, "every failure")
    finally:
        server.start()
    res = run_cli(settings, "resume", job_id)
    assert res.returncode == 0, res.stderr
    res = run_cli(settings, "wait", job_id, "--stall", "180")
    assert res.returncode == 0, res.stderr + workers.log("teacher")
