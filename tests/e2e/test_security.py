"""Security on real processes: JSON only, Redis over TLS with an ACL user, no leaked password.

Every Redis here is a redis-server of the test's own; the TLS one listens on TLS only, with a
CA and server certificate made by the openssl CLI, and its default user switched off.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import uuid
from pathlib import Path

import pytest

from distillq.core.runtime.settings import Settings
from distillq.workers.redis_server import EmbeddedRedis, TlsFiles, free_port
from tests.conftest import Workers, run_cli
from tests.e2e.test_cluster import flower_get
from tests.e2e.test_pipeline import enqueue
from tests.progress import wait_for

REFUSAL = "Refusing to deserialize untrusted content of type pickle"


def openssl(command: str, *args: str) -> None:
    subprocess.run(["openssl", *command.split(), *args], check=True, capture_output=True)


def make_tls_files(d: Path) -> TlsFiles:
    """A CA and a server certificate for 127.0.0.1 signed by it (PEM files under ``d``)."""
    d.mkdir(parents=True, exist_ok=True)
    ca, ca_key, cert, key, csr, san = (
        d / n for n in ("ca.pem", "ca.key", "srv.pem", "srv.key", "srv.csr", "san.cnf")
    )
    new_key = "-newkey rsa:2048 -nodes -days 1"
    openssl(f"req -x509 {new_key} -keyout {ca_key} -out {ca}", "-subj", f"/CN={d.name} CA")
    openssl(f"req {new_key} -keyout {key} -out {csr}", "-subj", "/CN=127.0.0.1")
    san.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl(
        f"x509 -req -days 1 -in {csr} -CA {ca} -CAkey {ca_key} -CAcreateserial -out {cert}",
        "-extfile",
        str(san),
    )
    return TlsFiles(cert=cert, key=key, ca=ca)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory):
    """A TLS-only redis-server whose one user is ``distillq`` with a random password."""
    root = tmp_path_factory.mktemp("tls")
    tls = make_tls_files(root / "certs")
    other_ca = make_tls_files(root / "other").ca  # a CA that did not sign the server
    server = EmbeddedRedis(root / "redis", user="distillq", password=secrets.token_hex(16), tls=tls)
    with server:
        yield server, tls, other_ca


class MakeDir:
    """Unpickling this runs ``os.mkdir(path)``: the code execution a pickled message carries."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def publish_pickled(url: str, task: str, args: tuple) -> str:
    """Put a Celery (protocol 2) task message with a pickle body on the ``teacher`` queue."""
    from kombu import Connection

    task_id = str(uuid.uuid4())
    headers = {
        "lang": "py",
        "task": task,
        "id": task_id,
        "root_id": task_id,
        "parent_id": None,
        "group": None,
        "retries": 0,
        "timelimit": [None, None],
        "eta": None,
        "expires": None,
        "argsrepr": "",
        "kwargsrepr": "{}",
        "origin": "attacker",
    }
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    with Connection(url) as conn:
        conn.Producer().publish(
            (args, {}, embed),
            exchange="",
            routing_key="teacher",
            serializer="pickle",
            headers=headers,
            correlation_id=task_id,
        )
    return task_id


def test_a_pickled_message_is_refused_and_the_worker_keeps_serving_json(
    settings, make_spec, workers, tmp_path
):
    import redis

    workers.start("teacher,student", "w")
    marker = tmp_path / "pwned"
    publish_pickled(settings.broker_url, "distillq.teacher_shard", (MakeDir(marker),))

    wait_for(lambda: REFUSAL in workers.log("w"), 60, f"no refusal logged:\n{workers.log('w')}")
    assert "ignored and discarded" in workers.log("w")
    assert not marker.exists()  # the payload was never unpickled
    r = redis.Redis.from_url(settings.broker_url)
    assert r.llen("teacher") == 0  # dropped, not put back to be refused forever
    assert not (settings.storage / "jobs").exists()  # no task ran, nothing written

    job_id = enqueue(settings, make_spec(n_records=30, shards=2))
    res = run_cli(settings, "wait", job_id, "--stall", "180")
    assert res.returncode == 0, res.stderr + workers.log("w")
    assert not marker.exists()


def test_a_job_runs_over_tls_with_an_acl_user_and_the_password_is_never_shown(
    tls_redis, make_spec, tmp_path
):
    server, tls, _ = tls_redis
    s = Settings(broker_url=server.url, storage=tmp_path / "storage", redis_tls_ca=str(tls.ca))
    assert server.url.startswith("rediss://distillq:")
    workers = Workers(s, tmp_path / "logs")
    flower_log = tmp_path / "logs" / "flower.log"
    flower = None
    try:
        workers.start("teacher,student", "w")
        job_id = enqueue(s, make_spec(n_records=30, shards=2))
        res = run_cli(s, "wait", job_id, "--stall", "180")
        assert res.returncode == 0, res.stderr + workers.log("w")

        from distillq.workers.launch import spawn_flower

        port = free_port()
        flower = spawn_flower(s, port, "admin", "fl0wer-pw", flower_log)
        url, auth = f"http://127.0.0.1:{port}", ("admin", "fl0wer-pw")

        def flower_workers() -> dict | None:
            body = flower_get(url, "/api/workers?refresh=1", auth)[1]
            # Flower shows each worker's stats and its whole Celery conf (inspect conf).
            return body if isinstance(body, dict) and body.get("w@test", {}).get("conf") else None

        wait_for(flower_workers, 60, flower_log.read_text() if flower_log.exists() else "")
        from_flower = json.dumps(flower_workers())
        assert "distillq_settings" in from_flower and "distillq:**" in from_flower

        shown = {
            "status": run_cli(s, "status", job_id),
            "status --json": run_cli(s, "status", job_id, "--json"),
            "nodes --json": run_cli(s, "nodes", "--json"),
        }
        for what, out in shown.items():
            assert out.returncode == 0, out.stderr
            assert server.password not in out.stdout + out.stderr, what
        assert json.loads(shown["status --json"].stdout)["state"] == "done"
        assert "w@test" in shown["nodes --json"].stdout
        assert server.password not in from_flower
    finally:
        workers.stop_all()
        if flower is not None:
            from distillq.workers.launch import stop_process_group

            stop_process_group(flower)
    logs = {p.name: p.read_text() for p in (tmp_path / "logs").glob("*.log")}
    assert "distillq:**" in logs["w.log"] or "distillq:***" in logs["w.log"]  # banner: masked
    for name, text in logs.items():
        assert server.password not in text, name


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("other CA", "TLS certificate not trusted"),
        ("plain redis://", "use rediss://"),
        ("wrong password", "user or password refused"),
        ("missing CA file", "TLS file not found"),
    ],
)
def test_a_bad_tls_or_auth_setting_is_one_line_naming_the_redacted_url(
    tls_redis, tmp_path, case, needle
):
    server, tls, other_ca = tls_redis
    url, ca = server.url, str(tls.ca)
    if case == "other CA":
        ca = str(other_ca)
    elif case == "plain redis://":
        url, ca = url.replace("rediss://", "redis://"), ""
    elif case == "missing CA file":
        ca = str(tmp_path / "no-such-ca.pem")
    else:
        url = url.replace(server.password, "not-the-password")
    s = Settings(broker_url=url, storage=tmp_path / "st", redis_tls_ca=ca)
    for command in (("nodes",), ("worker", "-Q", "teacher", "-n", "bad@test")):
        res = run_cli(s, *command, timeout=60)
        assert res.returncode == 1, res.stdout + res.stderr
        lines = [x for x in res.stderr.strip().splitlines() if x.startswith("distillq")]
        assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
        assert f"127.0.0.1:{server.port}/0" in lines[0] and "distillq:***@" in lines[0], lines[0]
        assert needle in lines[0], lines[0]
        assert server.password not in res.stdout + res.stderr


def test_no_secret_reaches_a_command_line(tmp_path):
    """Flower's password comes from the environment or a file, Redis's from an ACL file: the
    command lines of Flower, its children and the Redis server hold neither."""
    import sys

    from distillq.workers.launch import stop_process_group
    from tests.e2e.test_cluster import cmdlines

    redis_pw, flower_pw = "r3dis-" + secrets.token_hex(4), "fl0wer-" + secrets.token_hex(4)
    (tmp_path / "pw").write_text(flower_pw + "\n")
    with EmbeddedRedis(tmp_path / "redis", password=redis_pw) as server:
        s = Settings(broker_url=server.url, storage=tmp_path / "storage")
        refused = run_cli(s, "flower", "--password", flower_pw, timeout=60)
        assert refused.returncode != 0
        assert refused.stderr.strip().count("\n") == 0 and "--password-file" in refused.stderr
        port = free_port()
        env = {**os.environ, **s.to_env(), "DISTILLQ_FLOWER_USER": "admin"}
        env.pop("DISTILLQ_FLOWER_PASSWORD", None)
        log = (tmp_path / "flower.log").open("ab")
        flower = subprocess.Popen(
            [sys.executable, "-m", "distillq", "flower", "--port", str(port), "--password-file",
             str(tmp_path / "pw")],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for(
                lambda: flower_get(url, "/api/workers", ("admin", flower_pw))[0] == 200,
                60,
                (tmp_path / "flower.log").read_text(),
            )
            assert flower_get(url, "/api/workers", ("admin", "wrong"))[0] == 401
            lines = cmdlines([flower.pid, server.proc.pid])
            assert len(lines) >= 2
            for pid, line in lines.items():
                assert redis_pw not in line and flower_pw not in line, (pid, line)
        finally:
            stop_process_group(flower)
