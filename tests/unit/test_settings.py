"""Settings: per-queue time limits under the visibility timeout, TLS options in the URLs."""

from __future__ import annotations

import pytest
from celery import Celery

from distillq.core.runtime.broker import redacted
from distillq.core.runtime.settings import Settings
from distillq.errors import DistillqError
from distillq.tasks.celery_app import QUEUE_TASKS, celery_config, configure, settings_of


def test_per_queue_limits_default_to_the_global_ones():
    s = Settings(teacher_time_limit=1800, teacher_soft_time_limit=1700)
    assert s.time_limits("teacher") == (1700, 1800)
    assert s.time_limits("student") == s.time_limits() == (3 * 3600 - 300, 3 * 3600)


def test_per_queue_limits_reach_every_task_of_that_queue():
    s = Settings(
        teacher_time_limit=1800,
        teacher_soft_time_limit=1700,
        student_time_limit=7200,
        student_soft_time_limit=7000,
    )
    app = Celery("limits", set_as_current=False)
    app.config_from_object(celery_config(s))

    def noop() -> None:
        pass

    for queue, names in QUEUE_TASKS.items():
        for name in names:
            # shared=False: a shared task would join every app finalized later in this
            # process, and the e2e tests' own signatures would resolve to this noop.
            task = app.task(name=name, shared=False)(noop)
            assert (task.soft_time_limit, task.time_limit) == s.time_limits(queue), name
            assert app.amqp.router.route({}, name)["queue"].name == queue


def test_per_queue_limits_from_the_environment():
    env = {"DISTILLQ_STUDENT_TIME_LIMIT": "600", "DISTILLQ_STUDENT_SOFT_TIME_LIMIT": "540"}
    assert Settings.from_env(env).time_limits("student") == (540, 600)


@pytest.mark.parametrize("queue", ["task", "teacher", "student"])
def test_visibility_timeout_must_exceed_every_hard_limit(queue):
    # A queue's limit above the global one: the visibility timeout must outlast it too.
    limits = {f"{queue}_time_limit": 20_000, f"{queue}_soft_time_limit": 19_000}
    with pytest.raises(DistillqError, match=f"must exceed DISTILLQ_{queue.upper()}_TIME_LIMIT"):
        Settings(visibility_timeout=20_000, **limits)
    Settings(visibility_timeout=20_001, **limits)  # one second more is enough


@pytest.mark.parametrize("queue", ["task", "teacher", "student"])
def test_soft_limit_must_be_below_the_hard_one(queue):
    # A queue's hard limit alone leaves the (larger) global soft limit above it: say so.
    with pytest.raises(DistillqError, match=f"DISTILLQ_{queue.upper()}_SOFT_TIME_LIMIT"):
        Settings(**{f"{queue}_time_limit": 600, f"{queue}_soft_time_limit": 600})
    if queue != "task":
        with pytest.raises(DistillqError, match="lower it"):
            Settings(**{f"{queue}_time_limit": 600})


def test_tls_options_go_into_both_rediss_urls():
    s = Settings(
        broker_url="rediss://dq:pw@redis:6380/0",
        result_backend="rediss://dq:pw@redis:6380/1",
        redis_tls_ca="/etc/distillq/ca.pem",
        redis_tls_cert="/etc/distillq/client.pem",
        redis_tls_key="/etc/distillq/client.key",
    )
    tail = (
        "?ssl_cert_reqs=required&ssl_ca_certs=/etc/distillq/ca.pem"
        "&ssl_certfile=/etc/distillq/client.pem&ssl_keyfile=/etc/distillq/client.key"
    )
    assert s.broker_url == "rediss://dq:pw@redis:6380/0" + tail
    assert s.result_backend == "rediss://dq:pw@redis:6380/1" + tail
    assert s.with_(heartbeat_seconds=5).broker_url == s.broker_url  # normalising is idempotent


def test_a_bare_rediss_url_verifies_the_server_and_the_url_may_say_otherwise():
    assert Settings(broker_url="rediss://h:6380/0").broker_url.endswith("?ssl_cert_reqs=required")
    relaxed = Settings(broker_url="rediss://h:6380/0?ssl_cert_reqs=none")
    assert relaxed.broker_url == "rediss://h:6380/0?ssl_cert_reqs=none"


def test_tls_files_with_a_plain_url_are_refused():
    with pytest.raises(DistillqError, match="DISTILLQ_BROKER_URL is not a rediss:// URL"):
        Settings(broker_url="redis://h:6379/0", redis_tls_ca="/ca.pem")
    with pytest.raises(DistillqError, match="DISTILLQ_REDIS_TLS_CERT"):
        Settings(broker_url="rediss://h:6380/0", redis_tls_key="/client.key")


def test_settings_survive_the_celery_conf_without_credentials_in_our_own_key():
    s = Settings(
        broker_url="rediss://dq:hunter2@h:6380/0",
        redis_tls_ca="/ca.pem",
        teacher_time_limit=600,
        teacher_soft_time_limit=500,
    )
    app = configure(s)
    assert settings_of(app) == s
    assert "hunter2" not in repr(app.conf["distillq_settings"])
    assert "hunter2" not in repr(app.conf.table(with_defaults=True))  # what `inspect conf` sends


def test_redacted_hides_the_password_and_keeps_the_rest():
    assert redacted("redis://:pw@h:1/0") == "redis://:***@h:1/0"
    assert redacted("rediss://dq:pw@h:6380/0?ssl_ca_certs=/ca.pem") == (
        "rediss://dq:***@h:6380/0?ssl_ca_certs=/ca.pem"
    )
    assert redacted("redis://h:1/0") == "redis://h:1/0"


def test_sentinel_urls_need_the_master_name_and_the_name_needs_sentinels():
    with pytest.raises(DistillqError, match="DISTILLQ_SENTINEL_MASTER is not set; set it"):
        Settings(broker_url="sentinel://h1:26379;sentinel://h2:26379")
    with pytest.raises(DistillqError, match="not a sentinel:// URL"):
        Settings(broker_url="redis://h:6379/0", sentinel_master="distillq")


def test_the_master_name_reaches_kombu_and_celerys_sentinel_backend():
    url = "sentinel://:pw@h1:26379;sentinel://:pw@h2:26379"
    conf = celery_config(Settings(broker_url=url, sentinel_master="distillq"))
    assert conf["broker_url"] == conf["result_backend"] == url
    assert conf["broker_transport_options"]["master_name"] == "distillq"
    assert conf["result_backend_transport_options"]["master_name"] == "distillq"
    assert redacted(url) == "sentinel://:***@h1:26379;sentinel://:***@h2:26379"
