"""Datasets as users keep them: JSONL (plain, gzip, zstd), Parquet (a file, a directory),
``datasets``' save_to_disk — the same records make the same teacher shards."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from distillq.core import stages
from distillq.core.create import create_job
from distillq.core.job import sources
from distillq.core.job.load import load_spec
from distillq.errors import DataError
from tests.conftest import write_jsonl

# Alpaca-style columns (mapped with `columns:`), a chat in ShareGPT's layout, and plain text.
ALPACA = [
    {
        "instruction": f"Write a Python function number {i}.",
        "output": f"def f{i}():\n    return {i}\n",
    }
    for i in range(18)
]


def _records(text_records: list[dict]) -> list[dict]:
    return [{"prompt": r["instruction"], "response": r["output"]} for r in ALPACA] + text_records[
        :12
    ]


def _write_all(root: Path, recs: list[dict]) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard
    from datasets import Dataset

    root.mkdir(parents=True, exist_ok=True)
    jsonl = write_jsonl(root / "d.jsonl", recs)
    lines = jsonl.read_bytes()
    (root / "d.jsonl.gz").write_bytes(gzip.compress(lines))
    (root / "d.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
    # Columns of the union of shapes: Arrow fills each row's missing ones with None.
    keys = list(dict.fromkeys(k for r in recs for k in r))
    columns = {k: [r.get(k) for r in recs] for k in keys}
    table = pa.Table.from_pydict(columns)
    pq.write_table(table, root / "d.parquet", row_group_size=7)
    (root / "parts").mkdir()
    pq.write_table(table.slice(0, 13), root / "parts" / "part-000.parquet")
    pq.write_table(table.slice(13), root / "parts" / "part-001.parquet")
    Dataset.from_dict(columns).save_to_disk(str(root / "saved"))
    return {
        "jsonl": jsonl,
        "gzip": root / "d.jsonl.gz",
        "zstd": root / "d.jsonl.zst",
        "parquet": root / "d.parquet",
        "parquet-dir": root / "parts",
        "save_to_disk": root / "saved",
    }


def _shard_arrays(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in f if isinstance(f[k], h5py.Dataset)}


def test_every_format_gives_identical_teacher_shards(tmp_path, tiny_models, text_records):
    files = _write_all(tmp_path / "data", _records(text_records))
    shards = {}
    for name, path in files.items():
        spec_file = tmp_path / f"{name}.yaml"
        spec_file.write_text(
            yaml.safe_dump(
                {
                    "name": "fmt",
                    "dataset": str(path),
                    "shards": 2,
                    "eval_fraction": 0.1,
                    "teacher": {"model": tiny_models["teacher"], "top_k": 8, "max_length": 64},
                    "students": [{"name": "s", "model": tiny_models["student"]}],
                }
            )
        )
        job = create_job(tmp_path / "storage", load_spec(spec_file))
        stages.teacher_shard(job, 1)
        shards[name] = _shard_arrays(job.paths.shard(1))
    assert not list((tmp_path / "storage" / "staging").iterdir())  # nothing left behind
    want = shards.pop("jsonl")
    assert want["input_ids"].size > 0
    for name, got in shards.items():
        assert got.keys() == want.keys(), name
        for key in want:
            assert np.array_equal(got[key], want[key]), f"{name}: {key} differs"


def test_columns_map_alpaca_and_sharegpt_layouts():
    rec = sources.to_record(ALPACA[0], {"prompt": "instruction", "response": "output"})
    assert rec == {"prompt": ALPACA[0]["instruction"], "response": ALPACA[0]["output"]}
    chat = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}
    assert sources.to_record(chat, {}) == {
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    }
    with pytest.raises(DataError, match="no column 'question'"):
        sources.to_record({"q": 1}, {"prompt": "question"})


def test_a_bad_row_is_named_by_file_and_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from distillq.core.job.data import normalize_dataset

    rows = [{"text": "ok"}, {"text": "fine"}, {"text": None}, {"text": "last"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    with pytest.raises(DataError) as e:
        normalize_dataset(tmp_path / "d.parquet", {}, tmp_path / "out.jsonl")
    assert str(e.value).startswith("dataset d.parquet row 3: record (no keys) has none of")
    index = normalize_dataset(tmp_path / "d.parquet", {}, tmp_path / "out.jsonl", skip_bad=True)
    assert len(index.rows) == 3 and index.skipped == (3,)
    (tmp_path / "bad.jsonl.gz").write_bytes(gzip.compress(b'{"text": "a"}\n{oops\n'))
    with pytest.raises(DataError, match=r"dataset bad.jsonl.gz line 2: not valid JSON"):
        normalize_dataset(tmp_path / "bad.jsonl.gz", {}, tmp_path / "out.jsonl")


def test_a_dataset_dict_directory_asks_for_a_split(tmp_path):
    (tmp_path / "dd").mkdir()
    (tmp_path / "dd" / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    with pytest.raises(DataError, match=r"splits \['train', 'test'\].*dd/train"):
        sources.kind(tmp_path / "dd")


def test_enqueue_maps_columns_into_the_jobs_own_records(tmp_path, tiny_models):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(ALPACA), tmp_path / "alpaca.parquet")
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(
        yaml.safe_dump(
            {
                "name": "alpaca",
                "dataset": "alpaca.parquet",  # relative to the spec, like every path
                "shards": 2,
                "columns": {"prompt": "instruction", "response": "output"},
                "teacher": {"model": tiny_models["teacher"]},
                "students": [{"name": "s", "model": tiny_models["student"]}],
            }
        )
    )
    job = create_job(tmp_path / "storage", load_spec(spec_file))
    got = [json.loads(line) for line in job.paths.dataset.read_text().splitlines()]
    assert got == [{"prompt": r["instruction"], "response": r["output"]} for r in ALPACA]
