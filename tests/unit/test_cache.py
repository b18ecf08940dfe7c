import numpy as np
import pytest

from app.errors import CacheError
from storage.cache import CacheReader, CacheWriter, ShardMeta, id_dtype, verified, write_stats


def meta(k=4, vocab=300):
    return ShardMeta(
        shard=2,
        vocab_size=vocab,
        top_k=k,
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


def test_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    data = sample_data(rng)
    path = tmp_path / "shard-00002.h5"
    with CacheWriter(path, meta()) as w:
        for rid, ids, pos, t_ids, t_lp in data:
            w.add(rid, ids, pos, t_ids, t_lp)
    with CacheReader(path) as r:
        assert len(r) == 3
        assert r.record_ids.tolist() == [10, 11, 12]
        assert r.attrs["k"] == 4 and r.attrs["target_method"] == "topk"
        r.check_dataset_hashes()
        b = r.batch(0, 3)
        for i, (_, ids, pos, t_ids, t_lp) in enumerate(data):
            assert b.input_ids[i, : len(ids)].tolist() == ids.tolist()
            assert b.attention_mask[i].sum() == len(ids)
            sel = b.rows == i
            assert b.cols[sel].tolist() == pos.tolist()
            assert b.labels[sel].tolist() == ids[pos + 1].tolist()
            assert b.target_ids[sel].tolist() == t_ids.tolist()
            np.testing.assert_array_equal(b.target_logprobs[sel], t_lp.astype(np.float32))
        # a batch in the middle sees only its own samples' targets
        mid = r.batch(1, 2)
        assert mid.rows.tolist() == [0] * len(data[1][2])


def test_dtypes_fit_the_vocab(tmp_path):
    assert id_dtype(65536) == np.uint16 and id_dtype(152_064) == np.int32
    path = tmp_path / "s.h5"
    with CacheWriter(path, meta()) as w:
        for rid, ids, pos, t_ids, t_lp in sample_data(np.random.default_rng(1)):
            w.add(rid, ids, pos, t_ids, t_lp)
    import h5py

    with h5py.File(path) as f:
        assert f["target_ids"].dtype == np.uint16
        assert f["target_logprobs"].dtype == np.float16
        assert f["input_ids"].dtype == np.int32
        assert f["target_logprobs"].compression == "gzip"


def test_failed_write_leaves_no_file(tmp_path):
    path = tmp_path / "s.h5"
    with pytest.raises(RuntimeError), CacheWriter(path, meta()) as w:
        w.add(1, np.arange(5), np.arange(4), np.zeros((4, 4)), np.zeros((4, 4), np.float16))
        raise RuntimeError("killed mid-shard")
    assert list(tmp_path.iterdir()) == []


def test_sidecar_verification_detects_flipped_bytes(tmp_path):
    path, stats = tmp_path / "s.h5", tmp_path / "s.json"
    with CacheWriter(path, meta()) as w:
        for rid, ids, pos, t_ids, t_lp in sample_data(np.random.default_rng(2)):
            w.add(rid, ids, pos, t_ids, t_lp)
    write_stats(stats, path, {"samples": 3})
    assert verified(path, stats)["samples"] == 3
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert verified(path, stats) is None


def test_not_a_cache_file_is_refused(tmp_path):
    bad = tmp_path / "x.h5"
    bad.write_bytes(b"garbage")
    with pytest.raises(CacheError, match="cannot be opened"):
        CacheReader(bad)
