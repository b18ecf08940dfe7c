"""Bad input through the real `distillq enqueue`: one line naming the fix, exit 1, nothing lost.

No workers: enqueue validates everything before it queues anything. "Nothing lost" means the
job already on storage is byte-for-byte untouched, no new job directory appears, and nothing
is queued.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distillq.core.create import create_job
from distillq.core.job.jobs import load_job
from distillq.core.job.load import load_spec
from distillq.core.runtime.settings import Settings
from tests.conftest import run_cli
from tests.integration.test_cli_errors import one_line_error


def storage_files(storage: Path) -> dict[str, bytes]:
    return {str(p.relative_to(storage)): p.read_bytes() for p in storage.rglob("*") if p.is_file()}


@pytest.fixture
def before(settings: Settings, make_spec) -> dict[str, bytes]:
    """A job already on storage; returns a snapshot of storage to compare against."""
    create_job(settings.storage, load_spec(make_spec(n_records=20)))
    return storage_files(settings.storage)


def refused(settings: Settings, before: dict[str, bytes], args: list[str], *needles: str) -> str:
    """Run `distillq enqueue ARGS`; assert a one-line error with ``needles`` and nothing lost."""
    import redis

    res = run_cli(settings, "enqueue", *args)
    one_line_error(res, *needles)
    assert storage_files(settings.storage) == before
    assert redis.Redis.from_url(settings.broker_url).llen("teacher") == 0
    return res.stderr


def dataset(tmp_path: Path, lines: list[str]) -> str:
    path = tmp_path / "data.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def enqueued(settings: Settings, args: list[str]):  # -> app.job_store.Job
    res = run_cli(settings, "enqueue", *args)
    assert res.returncode == 0, res.stderr
    return load_job(settings.storage, res.stdout.strip().splitlines()[-1]), res.stderr


def good(n: int) -> list[str]:
    return [json.dumps({"text": f"def f{i}(x):\n    return x + {i}\n"}) for i in range(n)]


# ---------------------------------------------------------------- the dataset


def test_malformed_json_line_is_named_and_can_be_skipped_with_a_count(
    settings, make_spec, before, tmp_path
):
    data = dataset(tmp_path, [*good(2), '{"text": "unclosed', *good(9), "not json"])
    spec = str(make_spec(dataset=data))
    refused(
        settings,
        before,
        [spec],
        "dataset line 3 is not valid JSON",
        "fix or remove the line, or enqueue with --skip-bad-lines",
    )
    job, out = enqueued(settings, [spec, "--skip-bad-lines"])
    assert "skipped 2 bad dataset line(s): 3, 13" in out
    assert job.info.data.skipped_lines == 2 and job.split.n_records == 11
    assert job.index[:, 0].tolist() == [1, 2, *list(range(4, 13))]
    status = json.loads(run_cli(settings, "status", job.id, "--json").stdout)
    assert status["data"]["skipped_lines"] == 2


def test_record_without_its_fields_names_the_line_and_the_accepted_shapes(
    settings, make_spec, before, tmp_path
):
    data = dataset(tmp_path, [*good(1), json.dumps({"txt": "typo"}), *good(5)])
    refused(
        settings,
        before,
        [str(make_spec(dataset=data))],
        "dataset line 2: record ('txt') has none of the accepted shapes",
        '{"prompt": ..., "response": ...}',
        '{"messages": [{"role": ..., "content": ...}, ...]}',
    )


def test_empty_dataset_and_one_whose_every_line_is_skipped(settings, make_spec, before, tmp_path):
    spec = str(make_spec(dataset=dataset(tmp_path, ["", "  "])))
    refused(settings, before, [spec], "has no records", 'add JSONL lines like {"text": ...}')
    spec = str(make_spec(dataset=dataset(tmp_path, ["[1, 2]", "{bad", json.dumps({"a": 1})])))
    refused(
        settings,
        before,
        [spec, "--skip-bad-lines"],
        "has no valid records: all 3 lines were skipped as bad",
        "the first: dataset line 1: record is a JSON list",
    )


def test_overlong_samples_are_truncated_with_a_count_or_refused(
    settings, make_spec, before, tmp_path
):
    long = json.dumps({"text": "x = 1\n" * 200})
    spec = str(make_spec(dataset=dataset(tmp_path, [*good(4), long, *good(8), long])))
    refused(
        settings,
        before,
        [spec, "--set", "overlong=refuse"],
        "dataset line 5 is",
        "tokens, over teacher.max_length=96 (2 records exceed it)",
        "raise teacher.max_length",
        "set overlong: truncate",
    )
    job, out = enqueued(settings, [spec])
    assert "2 of 14 records are longer than teacher.max_length=96 tokens" in out
    assert job.info.data.truncated == 2 and job.spec.overlong == "truncate"


def test_no_training_target_within_max_length_is_refused(settings, make_spec, before, tmp_path):
    long_prompt = json.dumps({"prompt": "p " * 300, "response": "r"})
    spec = str(make_spec(dataset=dataset(tmp_path, [long_prompt] * 6)))
    refused(settings, before, [spec], "has a training target within its first 96 tokens", "raise")


def test_a_dataset_that_is_a_directory_or_binary_is_named_with_the_fix_and_gzip_is_read(
    settings, make_spec, before, tmp_path
):
    import gzip
    import os

    refused(
        settings,
        before,
        [str(make_spec(dataset=str(tmp_path)))],
        f"dataset directory {tmp_path} holds no Parquet files and no save_to_disk dataset",
        "point 'dataset' at a JSONL or Parquet file",
    )
    binary = tmp_path / "model.bin"
    binary.write_bytes(bytes(range(256)) * 40 + os.urandom(4000))
    refused(
        settings,
        before,
        [str(make_spec(dataset=str(binary)))],
        f"dataset {binary} is not text (a binary file?)",
        "a JSONL file (plain, .gz or .zst)",
    )
    # A gzip (by its bytes, whatever its name) is not bad input: it is read as JSONL.
    packed = tmp_path / "data.jsonl"
    with gzip.open(packed, "wt") as f:
        f.write("\n".join(good(20)) + "\n")
    job, _ = enqueued(settings, [str(make_spec(dataset=str(packed)))])
    assert len(job.index) == 20


def test_a_record_of_ten_megabytes_is_refused_by_line(settings, make_spec, before, tmp_path):
    huge = json.dumps({"text": "x" * (10 * 2**20)})
    spec = str(make_spec(dataset=dataset(tmp_path, [*good(3), huge, *good(8)])))
    refused(
        settings,
        before,
        [spec],
        "dataset line 4 is 10.0 MB, over the 1 MB limit for one record",
        "split it into records",
        "--skip-bad-lines",
    )
    job, out = enqueued(settings, [spec, "--skip-bad-lines"])
    assert job.info.data.skipped_lines == 1 and "4" in out


# ---------------------------------------------------------------- the spec


def test_invalid_yaml_and_unknown_keys(settings, make_spec, before, tmp_path):
    spec = make_spec()
    bad = tmp_path / "bad.yaml"
    bad.write_text(spec.read_text() + "teacher: {model: [x\n")
    refused(
        settings, before, [str(bad)], "is not valid YAML at line", ", column ", "fix the syntax"
    )
    refused(settings, before, [str(spec), "--set", "shard=3"], "unknown key 'shard'", "'shards'")
    refused(
        settings,
        before,
        [str(spec), "--set", "teacher.topk=8"],
        "unknown key 'teacher.topk'",
        "did you mean 'teacher.top_k'?",
    )


@pytest.mark.parametrize(
    "override,needles",
    [
        ("shards=0", ["shards=0 must be positive", "set it above 0"]),
        ("shards=-3", ["shards=-3 must be positive"]),
        ("shards=100", ["only 18 training records (2 of 20 held out", "at most 18"]),
        ("students.0.batch_size=0", ["batch_size=0 must be positive"]),
        ("students.0.lr=-1", ["lr=-1.0 must be positive"]),
        ("teacher.temperature=0", ["temperature=0.0 must be positive"]),
        ("mode=distill", ["mode='distill' is not one of", "teacher_student"]),
        ("loss.kind=kl", ["loss.kind='kl' is not one of", "forward_kl"]),
        ("students.0.peft.method=lorax", ["unknown PEFT method 'lorax'", "lora", "ia3", "full"]),
        ("students.0.name=../x", ["track name '../x' is not allowed", "no '..'"]),
        ("name=a/../../b", ["job name 'a/../../b' is not allowed"]),
        ("teacher.target_method=random", ["target_method='random' is not one of", "sampled"]),
        ("teacher.samples=8", ["teacher.samples applies to target_method: sampled"]),
    ],
)
def test_bad_spec_values(settings, make_spec, before, override, needles):
    refused(settings, before, [str(make_spec(n_records=20)), "--set", override], *needles)


@pytest.mark.parametrize(
    "overrides,needles",
    [
        (
            ["teacher.endpoint=[http://127.0.0.1:9/v1]"],
            ["target_method: sampled draws tokens from the teacher's whole distribution",
             "returns only its top-k", "use target_method: topk with an endpoint"],
        ),
        (["teacher.samples=300"], ["teacher.samples=300 must lie in [1, 255]"]),
        (["teacher.proposal_temperature=0"], ["teacher.proposal_temperature=0", "must be positive"]),
    ],
)  # fmt: skip
def test_sampled_targets_refuse_what_has_no_sound_estimate(
    settings, make_spec, before, overrides, needles
):
    args = [str(make_spec(n_records=20)), "--set", "teacher.target_method=sampled"]
    for o in overrides:
        args += ["--set", o]
    refused(settings, before, args, *needles)


# ---------------------------------------------------------------- models


@pytest.mark.parametrize(
    "model,needles",
    [
        # the error names what the spec says and the directory it resolved to (beside the spec)
        (
            "models/x",
            ["teacher model 'models/x' does not exist", "/models/x;", "Hugging Face cache"],
        ),
        ("./models/x", ["'./models/x' does not exist: not found locally (no directory /"]),
        ("no-org/no-model-here", ["/no-org/no-model-here;", "nor in the Hugging Face cache"]),
    ],
)
def test_missing_model_paths_are_reported_without_trying_the_hub(
    settings, make_spec, before, model, needles
):
    refused(
        settings,
        before,
        [str(make_spec()), "--set", f"teacher.model={model}"],
        *needles,
        "distillq does not download models: pass a local directory",
    )


def test_job_ids_that_do_not_exist_or_escape_storage(settings, before):
    # `status` is covered in test_cli_errors; these reach load_job by other paths.
    one_line_error(run_cli(settings, "wait", "no-such-job"), "does not exist", "distillq jobs")
    one_line_error(run_cli(settings, "resume", "../etc"), "'../etc' is not allowed")
    assert storage_files(settings.storage) == before


@pytest.mark.parametrize(
    ("damage", "needles"),
    [
        ("no weights", ["holds no weights", "copy the model's weight files into it"]),
        ("truncated", ["are truncated (", "copy the file again"]),
        ("not safetensors", ["not a readable safetensors file", "copy the file again"]),
    ],
)
def test_a_student_without_its_whole_weights_is_refused_at_enqueue(
    settings, make_spec, before, tmp_path, tiny_models, damage, needles
):
    import shutil

    broken = tmp_path / "broken-student"
    shutil.copytree(tiny_models["student"], broken)
    weights = broken / "model.safetensors"
    if damage == "no weights":
        weights.unlink()
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    else:
        weights.write_bytes(b"not a model at all")
    refused(
        settings,
        before,
        [str(make_spec()), "--set", f"students.0.model={broken}"],
        "student 's' model" if damage != "no weights" else "student",
        *needles,
    )
