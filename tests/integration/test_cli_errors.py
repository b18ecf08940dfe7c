"""User errors through the real `distillq` command: one line naming the fix, exit 1, nothing lost."""

from __future__ import annotations

import os

import pytest

from distillq.core.runtime.settings import Settings
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def foreign_student(tmp_path_factory):
    """A tiny model with a tokenizer of its own: distillq must refuse it as a student."""
    from distillq.app.demo_models import TinyLlama, llama, train_tokenizer

    out = tmp_path_factory.mktemp("foreign")
    train_tokenizer(["def f(x):\n    return x * 2\n" * 50, "class A:\n    pass\n" * 50], out)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    llama(TinyLlama(32, 1, 2, 64, 128), len(tok), tok.eos_token_id, 0).save_pretrained(out)
    return str(out)


def one_line_error(res, *needles):
    assert res.returncode == 1, res.stdout + res.stderr
    lines = [x for x in res.stderr.strip().splitlines() if x.startswith("distillq")]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_a_tokenizer_mismatch_with_sampled_targets_is_refused_before_any_compute(
    settings, make_spec, foreign_student
):
    """Across tokenizers the top-k is mapped onto the student's vocabulary (tests/e2e/
    test_cross_tokenizer.py); sampled targets cannot be yet, and say so in one line."""
    spec = make_spec()
    res = run_cli(
        settings, "enqueue", str(spec),
        "--set", f"students.0.model={foreign_student}",
        "--set", "teacher.target_method=sampled",
    )  # fmt: skip
    one_line_error(res, "different tokenizer", "'s'", "target_method: topk")
    assert not (settings.storage / "jobs").exists() or not any(
        (settings.storage / "jobs").iterdir()
    )


def test_missing_model_unknown_method_and_top_k(settings, make_spec):
    spec = make_spec()
    one_line_error(
        run_cli(settings, "enqueue", str(spec), "--set", "teacher.model=/nope/model"),
        "/nope/model",
        "does not exist",
    )
    one_line_error(
        run_cli(settings, "enqueue", str(spec), "--set", "students.0.peft.method=lorax"),
        "unknown PEFT method",
        "lora",
    )
    one_line_error(
        run_cli(settings, "enqueue", str(spec), "--set", "teacher.top_k=100000"),
        "exceeds the teacher's vocabulary",
    )


def test_unreachable_redis_names_the_url_without_password(tmp_path, make_spec):
    s = Settings(broker_url="redis://:hunter2@127.0.0.1:1/0", storage=tmp_path / "st")
    res = run_cli(s, "enqueue", str(make_spec()))
    one_line_error(res, "cannot reach Redis at redis://:***@127.0.0.1:1/0")
    assert "hunter2" not in res.stderr


def test_unknown_job_id_and_path_characters(settings):
    one_line_error(run_cli(settings, "status", "no-such-job"), "does not exist")
    one_line_error(run_cli(settings, "status", "../etc"), "not allowed")


def test_flower_refuses_to_start_without_credentials(settings):
    env_free = Settings(broker_url=settings.broker_url, storage=settings.storage)
    res = run_cli(env_free, "flower", "--port", "1")
    one_line_error(res, "DISTILLQ_FLOWER_USER", "--no-auth")


def test_worker_device_cuda_on_a_node_without_gpu_is_one_line(settings):
    res = run_cli(settings, "worker", "--device", "cuda", timeout=60)
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "--device cuda, but this node has no usable GPU" in lines[0]


def test_init_student_writes_a_student_a_job_accepts(settings, tmp_path):
    from distillq.app.demo_models import TEACHER_ASSET

    out = tmp_path / "student"
    res = run_cli(
        settings,
        "init-student",
        str(TEACHER_ASSET),
        "--out",
        str(out),
        "--layers",
        "2",
        "--from-teacher-layers",
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert "2 layers" in res.stdout and res.stdout.strip().splitlines()[-1] == str(out)
    assert (out / "config.json").exists() and (out / "tokenizer.json").exists()
    res = run_cli(settings, "init-student", str(tmp_path / "nope"), "--out", str(tmp_path / "x"))
    assert res.returncode != 0 and len(res.stderr.strip().splitlines()) == 1
    assert "does not exist" in res.stderr


def test_a_server_that_is_not_redis_on_the_broker_port(tmp_path, make_spec):
    import http.server
    import threading

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"redis://127.0.0.1:{httpd.server_address[1]}/0"
        res = run_cli(
            Settings(broker_url=url, storage=tmp_path / "st"), "enqueue", str(make_spec())
        )
        one_line_error(
            res,
            f"cannot reach Redis at {url}: the server there is not Redis",
            "HTML",
            "fix the port",
        )
        assert not (tmp_path / "st").exists()  # nothing made
    finally:
        httpd.shutdown()


def read_only(storage) -> list[str]:
    """Run a command in a mount namespace of its own where ``storage`` is mounted read-only."""
    return [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        f'mount --bind "{storage}" "{storage}" && mount -o remount,bind,ro "{storage}" && exec "$@"',
        "sh",
    ]


@pytest.mark.skipif(os.geteuid() != 0, reason="a read-only bind mount needs root")
@pytest.mark.parametrize("command", ["enqueue", "worker"])
def test_storage_on_a_read_only_filesystem_is_one_line(settings, make_spec, command):
    import subprocess
    import sys

    settings.storage.mkdir(parents=True)
    args = ["enqueue", str(make_spec())] if command == "enqueue" else ["worker", "-Q", "teacher"]
    res = subprocess.run(
        [*read_only(settings.storage), sys.executable, "-m", "distillq", *args],
        env={**os.environ, **settings.to_env()},
        capture_output=True,
        text=True,
        timeout=120,
    )
    one_line_error(
        res,
        f"storage {settings.storage} is on a read-only filesystem",
        "point DISTILLQ_STORAGE (or --storage) at a writable directory that every node shares",
    )
    assert not any(settings.storage.iterdir())  # nothing half made


def test_a_quick_try_on_the_first_records(settings, make_spec):
    """`enqueue --max-records N`: the job takes the dataset's first N records, says so at
    enqueue and in `status`; N = 0 is refused in one line and creates nothing."""
    spec = make_spec(n_records=48)
    res = run_cli(settings, "enqueue", str(spec), "--max-records", "0")
    assert res.returncode != 0 and "max_records" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    jobs = settings.storage / "jobs"
    assert not jobs.exists() or not any(jobs.iterdir())
    res = run_cli(settings, "enqueue", str(spec), "--max-records", "10")
    assert res.returncode == 0, res.stderr
    assert "the first 10 of 48 records" in res.stderr
    job_id = res.stdout.strip().splitlines()[-1]
    from distillq.core.job.jobs import load_job

    assert load_job(settings.storage, job_id).split.n_records == 10
    st = run_cli(settings, "status", job_id)
    assert "(first 10 of 48 records)" in st.stdout, st.stdout
