"""The private parts of kombu's Redis transport that ``workers/filing.py`` builds on.

pyproject.toml bounds kombu to the minor versions checked here; a kombu that moves any of
them fails this test by name, before a worker files a message the wrong way at run time.
"""

from __future__ import annotations

import inspect

from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import base


def params(fn: object) -> list[str]:
    return list(inspect.signature(fn).parameters)  # type: ignore[arg-type]


def test_qos_append_and_ack_take_what_filing_passes():
    assert params(kombu_redis.QoS.append) == ["self", "message", "delivery_tag"]
    assert params(kombu_redis.QoS.ack) == ["self", "delivery_tag"]


def test_a_qos_keeps_its_delivered_messages_by_tag():
    qos = kombu_redis.QoS.__new__(kombu_redis.QoS)
    base.QoS.__init__(qos, channel=None)
    assert isinstance(qos._delivered, dict)
    qos.restore_at_shutdown = False  # nothing to restore from a channel that never existed


def test_a_channel_takes_its_qos_class_and_restores_a_message_at_either_end():
    assert isinstance(kombu_redis.Channel.QoS, type)
    assert params(kombu_redis.Channel._do_restore_message)[:5] == [
        "self",
        "payload",
        "exchange",
        "routing_key",
        "pipe",
    ]
    assert "leftmost" in params(kombu_redis.Channel._do_restore_message)
    for name in ("unacked_key", "unacked_index_key", "conn_or_acquire"):
        assert hasattr(kombu_redis.Channel, name), name


def test_a_message_keeps_its_raw_payload_and_delivery_info():
    props = {"delivery_info": {"exchange": "", "routing_key": "teacher"}, "delivery_tag": "t"}
    msg = base.Message({"body": "", "properties": props}, channel=None)
    assert msg._raw["body"] == ""
    assert msg.delivery_info["routing_key"] == "teacher"
