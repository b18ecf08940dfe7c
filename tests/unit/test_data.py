import json

import numpy as np
import pytest
from transformers import AutoTokenizer

from distillq.app.demo_models import TEACHER_ASSET
from distillq.core.job.data import (
    TokenizeStats,
    index_dataset,
    plan_split,
    record_segments,
    scan_lengths,
    tokenize_record,
)
from distillq.errors import DataError


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(TEACHER_ASSET)


@pytest.mark.parametrize(
    "n,shards,frac", [(100, 4, 0.05), (7, 3, 0.0), (1000, 7, 0.1), (13, 12, 0.0), (50, 1, 0.2)]
)
def test_split_covers_every_record_exactly_once(n, shards, frac):
    split = plan_split(n, shards, frac)
    parts = [split.shard_ids(i) for i in range(shards)] + [split.eval_ids()]
    every = np.concatenate(parts)
    assert sorted(every.tolist()) == list(range(n))
    assert all(len(split.shard_ids(i)) > 0 for i in range(shards))
    assert all(
        np.all(np.diff(split.shard_ids(i)) > 0) for i in range(shards)
    )  # ordered, contiguous in train order
    sizes = [len(split.shard_ids(i)) for i in range(shards)]
    assert max(sizes) - min(sizes) <= 1


def test_more_shards_than_records_is_refused():
    with pytest.raises(DataError, match="lower 'shards'"):
        plan_split(5, 6, 0.0)


def test_prompt_response_trains_on_response_only(tok):
    s = tokenize_record({"prompt": "Q: 2+2?", "response": " A: 4"}, 0, tok, 64, TokenizeStats())
    n_prompt = len(tok("Q: 2+2?")["input_ids"])
    assert not any(s.target_mask[:n_prompt])
    assert all(s.target_mask[n_prompt:])
    assert s.target_positions()[0] == n_prompt - 1


def test_text_trains_on_all_tokens_and_ends_with_eos(tok):
    s = tokenize_record({"text": "def f(x):\n    return x\n"}, 3, tok, 64, TokenizeStats())
    assert s.input_ids[-1] == tok.eos_token_id
    assert s.target_positions() == list(range(len(s.input_ids) - 1))


def test_messages_use_the_chat_template_and_train_on_assistant_turns(tok):
    msgs = [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi there"},
        {"role": "user", "content": "bye"},
        {"role": "assistant", "content": "ciao"},
    ]
    s = tokenize_record({"messages": msgs}, 0, tok, 128, TokenizeStats())
    text = tok.decode([t for t, m in zip(s.input_ids, s.target_mask, strict=True) if m])
    assert "hi there" in text and "ciao" in text
    assert "hello" not in text and "bye" not in text


def test_messages_without_template_use_the_plain_template():
    segs = record_segments(
        {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]},
        False,
    )
    assert segs == [
        ("<|user|>\n", False),
        ("u\n", False),
        ("<|assistant|>\n", False),
        ("a\n", True),
    ]


def test_truncation_is_counted(tok):
    stats = TokenizeStats()
    s = tokenize_record({"text": "x = 1\n" * 200}, 0, tok, 16, stats)
    assert len(s.input_ids) == 16 and stats.truncated == 1


def test_bad_lines_are_named(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"text": "ok"}) + "\n\n" + "{not json\n")
    with pytest.raises(DataError, match="line 3"):
        index_dataset(f)
    f.write_text(json.dumps({"txt": "typo"}) + "\n")
    with pytest.raises(DataError, match="line 1"):
        index_dataset(f)
    f.write_text("\n\n")
    with pytest.raises(DataError, match="no records"):
        index_dataset(f)


def test_index_skips_blank_lines_and_points_at_records(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "a"}\n\n{"text": "b"}\n')
    idx = index_dataset(f).rows
    assert idx[:, 0].tolist() == [1, 3]
    with f.open("rb") as fh:
        fh.seek(idx[1, 1])
        assert json.loads(fh.readline())["text"] == "b"


def test_bad_lines_name_the_fix_and_can_be_skipped(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "a"}\n{oops\n\n{"txt": "typo"}\n{"text": "b"}\n')
    with pytest.raises(DataError, match=r"line 2 is not valid JSON .*--skip-bad-lines"):
        index_dataset(f)
    idx = index_dataset(f, skip_bad=True)
    assert idx.rows[:, 0].tolist() == [1, 5] and idx.skipped == (2, 4)


def test_a_shapeless_record_lists_the_accepted_shapes(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"txt": "typo"}\n')
    with pytest.raises(
        DataError, match=r"line 1: record \('txt'\) has none of the accepted shapes"
    ):
        index_dataset(f)


def test_all_lines_skipped_is_an_empty_dataset(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text("[1]\n{bad\n")
    with pytest.raises(DataError, match="no valid records: all 2 lines were skipped"):
        index_dataset(f, skip_bad=True)


def test_more_shards_than_training_records_names_both_counts():
    with pytest.raises(DataError, match=r"only 9 training records \(1 of 10 held out.*at most 9"):
        plan_split(10, 12, 0.1)


def test_scan_lengths_finds_the_first_overlong_line_and_targetless_records(tmp_path, tok):
    f = tmp_path / "d.jsonl"
    records = [
        {"text": "short"},
        {"prompt": "p " * 50, "response": "r"},
        {"text": "x = 1\n" * 50},
    ]
    f.write_text("".join(json.dumps(r) + "\n" for r in records))
    scan = scan_lengths(f, index_dataset(f).rows, tok, 16)
    assert scan.records == 3 and scan.overlong == 2 and scan.no_target == 1
    assert scan.first_overlong is not None and scan.first_overlong[0] == 2
    assert scan.first_overlong[1] > 16


def test_the_light_tokenizer_of_enqueue_is_the_workers_tokenizer(tiny_models):
    """enqueue loads tokenizers without the model's config class (a second of imports); it
    must get the same tokenizer the workers load: class, fingerprint, encodings, chat."""
    from distillq.core.job.models import _light_config, load_tokenizer, tokenizer_fingerprint

    ref = tiny_models["student"]
    assert _light_config(ref) is not None  # the demo tokenizer names its class
    light, full = load_tokenizer(ref, light=True), load_tokenizer(ref)
    assert type(light) is type(full)
    assert tokenizer_fingerprint(light) == tokenizer_fingerprint(full)
    text = "def f(x):\n    return x  # héllo"
    assert light(text)["input_ids"] == full(text)["input_ids"]
    assert light.pad_token_id == full.pad_token_id and light.eos_token_id == full.eos_token_id
