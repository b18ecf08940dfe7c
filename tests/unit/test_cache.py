import h5py
import numpy as np
import pytest

from distillq.core.targets.shard import Shard
from distillq.core.targets.topk import TopK
from distillq.errors import CacheError
from distillq.storage.cache import (
    CacheWriter,
    ShardMeta,
    decode_logprobs,
    encode_logprobs,
    id_dtype,
    verified,
    write_stats,
)
from distillq.storage.records import ShardStats


def meta(k=4, vocab=300):
    return ShardMeta(
        shard=2,
        vocab_size=vocab,
        width=k,
        temperature=1.0,
        teacher_fingerprint="t",
        tokenizer_fingerprint="tok",
        record_range=(10, 13),
    )


def sample_data(rng, k=4, vocab=300):
    out = []
    for rid, length in [(10, 7), (11, 3), (12, 9)]:
        ids = rng.integers(0, vocab, length)
        pos = np.arange(length - 1)[length // 3 :]
        t_ids = rng.integers(0, vocab, (len(pos), k))
        t_lp = np.sort(np.log(rng.dirichlet(np.ones(k), len(pos))), axis=-1)[:, ::-1].astype(
            np.float16
        )
        out.append((rid, ids, pos, t_ids, t_lp))
    return out


def written(path, seed: int) -> list:
    """``sample_data(seed)`` written as a top-k shard at ``path``; returns the data."""
    data = sample_data(np.random.default_rng(seed))
    with CacheWriter(path, meta()) as w:
        for rid, ids, pos, t_ids, t_lp in data:
            w.add(rid, ids, pos, t_ids, t_lp)
    return data


def test_round_trip(tmp_path):
    path = tmp_path / "shard-00002.h5"
    data = written(path, 0)
    with Shard(path) as r:
        assert len(r) == 3
        assert r.attrs["k"] == 4 and r.attrs["target_method"] == "topk"
        with h5py.File(path) as f:
            assert f["record_ids"][:].tolist() == [10, 11, 12]
        batch = r.batch(0, 3)
        b = batch.padded
        for i, (_, ids, pos, t_ids, t_lp) in enumerate(data):
            assert b.input_ids[i, : len(ids)].tolist() == ids.tolist()
            assert b.attention_mask[i].sum() == len(ids)
            sel = b.rows == i
            assert b.cols[sel].tolist() == pos.tolist()
            assert b.labels[sel].tolist() == ids[pos + 1].tolist()
            assert batch.target_ids[sel].tolist() == t_ids.tolist()
            np.testing.assert_array_equal(batch.target_logprobs[sel], t_lp.astype(np.float32))
        # a batch in the middle sees only its own samples' targets
        mid = r.batch(1, 2)
        assert mid.padded.rows.tolist() == [0] * len(data[1][2])


def test_dtypes_fit_the_vocab(tmp_path):
    assert id_dtype(65536) == np.uint16 and id_dtype(152_064) == np.int32
    path = tmp_path / "s.h5"
    written(path, 1)
    with h5py.File(path) as f:
        assert f.attrs["format"] == "distillq.teacher/3"
        assert f["target_ids"].dtype == np.uint16
        assert f["target_logprobs_delta"].dtype == np.uint16
        assert f["input_ids"].dtype == np.int32
        assert f["target_logprobs_delta"].compression == "gzip"


def test_logprob_delta_coding_is_bit_exact_for_any_values_and_order():
    rng = np.random.default_rng(3)
    special = [0.0, -0.0, 1e-3, -np.inf, np.inf, np.nan, -65504.0, -6e-8, -1.0, 2.0]
    lp = np.concatenate([rng.normal(-5, 4, (50, 10)), [special, special[::-1]]]).astype(np.float16)
    rng.shuffle(lp, axis=1)  # no order assumed: sorted rows only compress better
    d = encode_logprobs(lp)
    assert d.dtype == np.uint16 and d.shape == lp.shape
    assert decode_logprobs(d).view(np.uint16).tolist() == lp.view(np.uint16).tolist()
    assert decode_logprobs(encode_logprobs(np.zeros((0, 4)))).shape == (0, 4)


def test_format_1_files_are_still_read(tmp_path):
    path = tmp_path / "s.h5"
    data = written(path, 4)
    with h5py.File(path, "r+") as f:  # rewrite it the way distillq.teacher/1 stored log-probs
        lp = decode_logprobs(f["target_logprobs_delta"][:])
        del f["target_logprobs_delta"]
        f.create_dataset("target_logprobs", data=lp, compression="gzip", shuffle=True)
        f.attrs["format"] = "distillq.teacher/1"
    with Shard(path) as r:
        expected = np.concatenate([t_lp for *_, t_lp in data]).astype(np.float32)
        np.testing.assert_array_equal(r.batch(0, 3).target_logprobs, expected)


def test_format_2_files_are_still_read(tmp_path):
    """Format 2 is format 3's top-k layout under the older name: read as top-k, no weights."""
    path = tmp_path / "s.h5"
    data = written(path, 5)
    with h5py.File(path, "r+") as f:
        f.attrs["format"] = "distillq.teacher/2"
        del f.attrs["target_method"]  # no method recorded: read as top-k
    with Shard(path) as r:
        b = r.batch(0, 3)
        expected = np.concatenate([t_lp for *_, t_lp in data]).astype(np.float32)
        np.testing.assert_array_equal(b.target_logprobs, expected)
        assert isinstance(r.method, TopK) and b.target_weights is None


def test_failed_write_leaves_no_file(tmp_path):
    path = tmp_path / "s.h5"
    with pytest.raises(RuntimeError), CacheWriter(path, meta()) as w:
        w.add(1, np.arange(5), np.arange(4), np.zeros((4, 4)), np.zeros((4, 4), np.float16))
        raise RuntimeError("killed mid-shard")
    assert list(tmp_path.iterdir()) == []


def test_sidecar_verification_detects_flipped_bytes(tmp_path):
    path, stats = tmp_path / "s.h5", tmp_path / "s.json"
    written(path, 2)
    counts = dict(samples=3, tokens=19, target_positions=11, seconds=0.1, tokens_per_s=190.0)
    write_stats(stats, path, ShardStats(shard=0, started_at=1.0, finished_at=2.0, **counts))
    assert verified(path, stats).samples == 3
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert verified(path, stats) is None


def test_not_a_cache_file_is_refused(tmp_path):
    bad = tmp_path / "x.h5"
    bad.write_bytes(b"garbage")
    with pytest.raises(CacheError, match="cannot be opened"):
        Shard(bad)


def test_demo_teacher_cache_fits_160_bytes_per_position_at_k64(tmp_path):
    """docs/DESIGN.md §5's size goal on real output of the shipped demo teacher (vocab 4,096).

    A size, not a timing: the bytes are a deterministic function of the teacher's outputs.
    The full benchmark (bench/cache_size.py, 200 records) lands lower, at ~148 B.
    """
    from distillq.app.demo_models import TEACHER_ASSET, write_demo_dataset
    from distillq.core.job.data import index_dataset
    from distillq.core.job.models import load_causal_lm, load_tokenizer
    from distillq.core.teacher.local import LocalTeacher, write_shard

    records = 24
    data = write_demo_dataset(tmp_path / "d.jsonl", max_records=records)
    model, tok = load_causal_lm(str(TEACHER_ASSET)), load_tokenizer(str(TEACHER_ASSET))
    out = tmp_path / "s.h5"
    teacher = LocalTeacher(
        model, tok, temperature=1.0, batch_size=16, max_length=256, generate=None, method=TopK(64)
    )
    counts, _, _ = write_shard(
        teacher=teacher,
        tok=tok,
        dataset=data,
        index=index_dataset(data).rows,
        record_ids=np.arange(records),
        out=out,
        meta=ShardMeta(0, 4096, 64, 1.0, "t", "tok", (0, records)),
        max_length=256,
    )
    assert counts["target_positions"] > 2000
    assert out.stat().st_size / counts["target_positions"] <= 160


def test_the_teachers_responses_read_back_as_the_text_it_wrote(tmp_path):
    """The text is stored as UTF-8 bytes (vlen uint8): it reads back as that text, not as the
    array of its bytes (what `distillq show` printed until a real model wrote English)."""
    path = tmp_path / "shard-00002.h5"
    data = sample_data(np.random.default_rng(0))
    texts = ["Paris is the capital of France.", "", "naïve café — ok"]
    with CacheWriter(path, meta()) as w:
        for (rid, ids, pos, t_ids, t_lp), text in zip(data, texts, strict=True):
            w.add(rid, ids, pos, t_ids, t_lp, text=text, kind=1 if text else 0)
    with Shard(path) as r:
        assert [r.generated(j) for j in range(len(r))] == [(1, texts[0]), (0, ""), (1, texts[2])]
