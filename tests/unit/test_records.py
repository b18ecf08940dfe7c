"""Typed records: JSON round trips, old files, clear errors; task keys built and parsed once."""

import json

import pytest

from distillq.errors import RecordError
from distillq.storage import records, taskkeys
from distillq.storage.records import (
    CheckpointMeta,
    JobInfo,
    ReplicaOutcome,
    ReplicaStats,
    RoundInfo,
)
from tests.conftest import replica_stats as make_replica_stats


def replica_stats(**over):
    return make_replica_stats(
        **{
            "track": "kd",
            "shard": 3,
            "replica": 1,
            "start_version": 2,
            "curve": [[11, 3.2, 3.0, 3.4]],
            **over,
        }
    )


def test_nested_records_round_trip_through_json(tmp_path):
    meta = CheckpointMeta(
        track="kd",
        step=10,
        merged_shards=[3],
        rounds=[RoundInfo(3, 99.0, 102.0, [replica_stats().without_curve()], [[11, 3.2, 3, 3]])],
        version=1,
    )
    records.write(tmp_path / "meta.json", meta)
    back = records.read(CheckpointMeta, tmp_path / "meta.json")
    assert back == meta and isinstance(back.rounds[0].replicas[0], ReplicaStats)
    assert back.rounds[0].replicas[0].curve == []


def test_a_record_from_an_older_writer_loads_with_defaults_and_ignores_unknown_keys():
    raw = {
        "fingerprints": {"tokenizer": "abc", "students": {"s": {"model": "m", "tokenizer": "t"}}},
        "total_steps": {"s": 4},
        "some_future_field": 1,
    }
    info = records.from_json(JobInfo, raw, "job.yaml: info")
    assert info.created == "" and info.data.truncated == 0
    assert info.fingerprints.students["s"].model == "m"


def test_a_record_missing_a_required_field_names_the_file_and_field(tmp_path):
    f = tmp_path / "stats.json"
    f.write_text(json.dumps({"track": "kd"}))
    with pytest.raises(RecordError, match=r"stats\.json: ReplicaStats has no 'shard'"):
        records.read(ReplicaStats, f)


def test_replica_outcomes_keep_their_task_result_shape():
    done = ReplicaOutcome(stats=replica_stats())
    as_json = done.to_json()
    assert as_json["curve"] == [] and as_json["start_version"] == 2  # no curve over Redis
    assert ReplicaOutcome.from_json(as_json).stats == replica_stats(curve=[])
    skipped = ReplicaOutcome.from_json(ReplicaOutcome(skipped="missing").to_json())
    assert skipped.skipped == "missing" and skipped.stats is None


@pytest.mark.parametrize(
    "key",
    [
        taskkeys.teacher(7),
        taskkeys.TEACHER_EVAL,
        taskkeys.replica("kd-2", 12, 3),
        taskkeys.merge("with-dash", 0),
        taskkeys.FINALIZE,
    ],
    ids=str,
)
def test_task_keys_parse_back_to_themselves(key):
    assert taskkeys.parse(str(key)) == key


def test_task_key_spellings_are_stable():
    # Failure files and Redis counters of jobs already running use these names.
    assert str(taskkeys.teacher(3)) == "teacher-00003"
    assert str(taskkeys.replica("kd", 3, 1)) == "replica-kd-00003-1"
    assert str(taskkeys.merge("kd", 3)) == "merge-kd-00003"
    assert taskkeys.parse("replica-kd-x-1") is None and taskkeys.parse("teacher-") is None
