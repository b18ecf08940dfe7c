"""docker/compose.yaml, checked without a Docker engine: structure, commands, environment."""

import re
from pathlib import Path

import pytest
import yaml

from distillq.app.cli import parser
from distillq.core.runtime.settings import Settings

COMPOSE = Path(__file__).parents[2] / "docker" / "compose.yaml"
_VAR = re.compile(r"\$\{(\w+)(?::-([^}$]*)|:\?([^}$]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} substitution (and $$ → $)."""

    def one(m: re.Match) -> str:
        name, default, required = m.group(1), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        if required is not None:
            raise KeyError(f"{name}: {required}")
        return default or ""

    while (done := _VAR.sub(one, text)) != text:  # nested: ${A:-${B}} from the inside out
        text = done
    return text.replace("$$", "$")


def load_compose(env: dict[str, str]) -> dict:
    return yaml.safe_load(interpolate(COMPOSE.read_text(), env))


ENV = {"DISTILLQ_REDIS_PASSWORD": "s3cret", "DISTILLQ_FLOWER_PASSWORD": "fl0wer"}


@pytest.fixture(scope="module")
def compose():
    return load_compose(ENV)


def distillq_services(compose):
    return {n: s for n, s in compose["services"].items() if s.get("image") == "distillq:latest"}


def test_every_distillq_command_is_a_real_subcommand(compose):
    services = distillq_services(compose)
    assert {"flower", "teacher", "student-1", "student-2", "enqueue-demo"} <= set(services)
    for name, svc in services.items():
        args = parser().parse_args(svc["command"])  # raises SystemExit on an unknown command/flag
        assert callable(args.fn), name


def test_workers_cover_both_queues_and_share_storage(compose):
    services = distillq_services(compose)
    queues = [
        parser().parse_args(s["command"]).queues
        for s in services.values()
        if s["command"][0] == "worker"
    ]
    assert (
        any(q.startswith("teacher") for q in queues)
        and sum(q.startswith("student") for q in queues) == 2
    )
    for name, svc in services.items():
        assert "distillq-data:/data" in svc["volumes"], name
        env = svc["environment"]
        assert env["DISTILLQ_STORAGE"] == "/data" and env["DISTILLQ_BROKER_URL"].startswith(
            "redis://"
        ), name
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy", name


def test_redis_is_durable_and_password_protected_and_flower_needs_credentials(compose):
    redis_cmd = " ".join(compose["services"]["redis"]["command"])
    assert "--appendonly yes" in redis_cmd and "noeviction" in redis_cmd
    assert "--requirepass s3cret" in redis_cmd
    assert compose["services"]["flower"]["environment"]["DISTILLQ_FLOWER_PASSWORD"] == "fl0wer"
    for missing in ENV:  # compose refuses to start without either secret
        with pytest.raises(KeyError, match=missing):
            load_compose({k: v for k, v in ENV.items() if k != missing})


def test_grace_period_outlasts_a_warm_shutdown(compose):
    for name, svc in distillq_services(compose).items():
        grace = svc["stop_grace_period"]
        assert grace.endswith("m") and int(grace[:-1]) >= 1, name


def test_commented_tls_example_names_real_settings():
    from dataclasses import fields

    from distillq.core.runtime.settings import Settings

    named = set(re.findall(r"^\s*# (DISTILLQ_\w+):", COMPOSE.read_text(), re.MULTILINE))
    known = {f"DISTILLQ_{f.name.upper()}" for f in fields(Settings)}
    assert {"DISTILLQ_BROKER_URL", "DISTILLQ_REDIS_TLS_CA"} <= named <= known


def test_the_ha_profile_runs_a_replica_and_three_sentinels_the_services_can_use(compose):
    ha = {n: s for n, s in compose["services"].items() if "ha" in s.get("profiles", [])}
    assert set(ha) == {"redis-replica", "sentinel-1", "sentinel-2", "sentinel-3"}
    assert ha["redis-replica"]["command"][-3:] == ["--replicaof", "redis", "6379"]
    for name in ("sentinel-1", "sentinel-2", "sentinel-3"):
        script = ha[name]["command"][0]
        assert "sentinel monitor distillq redis 6379 2" in script and "--sentinel" in script
    assert "--masterauth" in compose["services"]["redis"]["command"]  # rejoins as a replica
    # Default: the single Redis; with the HA variables, every distillq service the sentinels.
    assert distillq_services(compose)["teacher"]["environment"]["DISTILLQ_BROKER_URL"] == (
        "redis://:s3cret@redis:6379/0"
    )
    url = ";".join(f"sentinel://:s3cret@sentinel-{i}:26379" for i in (1, 2, 3))
    env = {**ENV, "DISTILLQ_BROKER_URL": url, "DISTILLQ_SENTINEL_MASTER": "distillq"}
    for name, svc in distillq_services(load_compose(env)).items():
        settings = Settings.from_env(svc["environment"])
        assert settings.broker_url == url and settings.sentinel_master == "distillq", name
