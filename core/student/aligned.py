"""A teacher shard in a student's own tokens, for a student whose tokenizer is not the
teacher's: the same records, tokenized by the student (the teacher's written responses
included), with the teacher's top-k mapped onto the student's positions and vocabulary
(``core/align``).

Where it runs: once per shard and student tokenizer, by the first replica that reads it, and
kept beside the teacher's cache (``aligned/<tokenizer>/shard-N.h5``, in the cache format the
student already reads). The teacher's cache stays in the teacher's vocabulary, so students of
several tokenizers share one teacher pass, and teacher nodes never load a student tokenizer.
The file names the sha256 of the shard it was made from: a regenerated shard is mapped anew.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from distillq.core.align.mapping import Shares, student_targets, vocab_map
from distillq.core.align.spans import align
from distillq.core.align.tokens import fallback_ids, vocab_bytes
from distillq.core.job.data import (
    Sample,
    TokenizeStats,
    read_records,
    tokenize_record,
    with_response,
)
from distillq.core.job.jobs import Job
from distillq.core.job.models import load_tokenizer, sample_tokenizer, tokenizer_fingerprint
from distillq.storage import cache
from distillq.storage.cache import CacheReader, CacheWriter, ShardMeta

log = logging.getLogger(__name__)

SOURCE_ATTR = "aligned_from_sha256"
MAPPING_ATTR = "aligned_mapping"
MAPPING = 3
"""Bumped when the mapping changes, so copies made by an older one are made again (2: targets
name the piece a SentencePiece student writes, not its byte-fallback twin; 3: exact matches
only, the rest of the mass in the tail)."""
KINDS = ("exact", "chain", "split", "none")


def _share_attrs(shares: Shares) -> dict[str, int | float | str]:
    return {f"aligned_{k}": getattr(shares, k) for k in KINDS}


def read_shares(path: Path) -> Shares:
    """The alignment counts an aligned file records."""
    with CacheReader(path) as r:
        return Shares(**{k: int(r.attrs.get(f"aligned_{k}", 0)) for k in KINDS})


def crosses(job: Job, track: str) -> bool:
    """Whether ``track``'s tokenizer is not the one the teacher's cache is in."""
    fp = job.info.fingerprints
    return fp.students[track].tokenizer != fp.tokenizer


def shard_for(job: Job, track: str, shard: int) -> Path:
    """The cache file ``track`` trains on for ``shard``: the teacher's, or its aligned copy
    (made now if missing or made from another version of the shard)."""
    src = job.paths.shard(job.cache_shard(shard))
    if not crosses(job, track):
        return src
    fp = job.info.fingerprints.students[track].tokenizer
    out = job.paths.aligned_shard(shard, fp)
    stats = cache.read_stats(job.paths.shard_stats(job.cache_shard(shard)))
    if out.exists():
        with CacheReader(out) as r:
            if (r.attrs.get(SOURCE_ATTR), r.attrs.get(MAPPING_ATTR)) == (stats.sha256, MAPPING):
                return out
    spec = job.spec.student(track)
    write(job, src, out, sample_tokenizer(job.spec), load_tokenizer(spec.model), stats.sha256)
    return out


def records_of(job: Job, r: CacheReader, n: int | None = None) -> dict[int, Any]:
    """The dataset records behind the first ``n`` samples of a cache file, by record id."""
    rids = r.record_ids()[:n]
    return dict(read_records(job.paths.dataset, job.index, np.unique(rids)))


def retokenized(
    job: Job, r: CacheReader, j: int, records: dict[int, Any], tok: Any, stats: TokenizeStats
) -> Sample | None:
    """Sample ``j`` of a cache file as ``tok`` tokenizes it: its record, with the response the
    teacher wrote where it wrote one (None where no target survives truncation)."""
    rid = r.record_id(j)
    kind, text = r.generated(j)
    record = with_response(records[rid], text) if kind else records[rid]
    return tokenize_record(record, rid, tok, job.spec.sample_max_length, stats)


_pairs: dict[tuple[str, str], tuple[list[bytes | None], list[bytes | None], np.ndarray]] = {}


def _vocabs(
    teacher: Any, student: Any
) -> tuple[list[bytes | None], list[bytes | None], np.ndarray]:
    # By what the tokenizers are, not by id(): tokenizers are loaded per call and dropped, and
    # a later one can get a dropped one's id (and its map).
    key = (tokenizer_fingerprint(teacher), tokenizer_fingerprint(student))
    if key not in _pairs:
        tb, sb = vocab_bytes(teacher), vocab_bytes(student)
        _pairs[key] = (tb, sb, vocab_map(tb, sb, fallback_ids(student)))
    return _pairs[key]


def write(job: Job, src: Path, out: Path, teacher_tok: Any, student_tok: Any, sha: str) -> Shares:
    """Map the shard ``src`` onto ``student_tok``'s tokens into ``out`` (atomically)."""
    tb, sb, vmap = _vocabs(teacher_tok, student_tok)
    shares, stats = Shares(), TokenizeStats()
    with CacheReader(src) as r:
        a = r.attrs
        k = int(a.get("k", 0))
        meta = ShardMeta(
            shard=int(a["shard"]),
            vocab_size=len(student_tok),
            width=k,
            temperature=float(a["temperature"]),
            teacher_fingerprint=str(a["teacher_fingerprint"]),
            tokenizer_fingerprint=job.info.fingerprints.tokenizer,
            record_range=(int(a["record_range"][0]), int(a["record_range"][1])),
            source=str(a.get("target_source", "local")),
            method=str(a.get("target_method", "topk")),
        )
        records = records_of(job, r)
        with CacheWriter(out, meta) as w:
            for j in range(len(r)):
                s = retokenized(job, r, j, records, student_tok, stats)
                if s is None:
                    continue
                rid = s.record_id
                kind, text = r.generated(j)
                s_ids = np.asarray(s.input_ids, np.int64)
                s_pos = np.asarray(s.target_positions(), np.int64)
                t_ids = r.sample_ids(j).astype(np.int64)
                t_pos = r.positions_of(j)
                if k:
                    spans = r.spans(np.asarray([j]))
                    top_ids = r.rows("target_ids", spans).astype(np.int64)
                    top_lp = r.logprobs(spans).astype(np.float32)
                    t_next, s_next = t_ids[t_pos + 1], s_ids[s_pos + 1]
                    pairs = align([tb[int(x)] for x in t_next], [sb[int(x)] for x in s_next])
                    ids, lps = student_targets(
                        pairs, t_next, s_next, top_ids, top_lp, vmap, shares, tb, sb
                    )
                    w.add(rid, s_ids, s_pos, ids, lps, text=text, kind=kind)
                else:
                    w.add(rid, s_ids, s_pos, None, None, text=text, kind=kind)
            # Attributes are written as the file is committed, so the counts can go in last.
            meta.method_attrs.update(
                {SOURCE_ATTR: sha, MAPPING_ATTR: MAPPING, **_share_attrs(shares)}
            )
    log.info(
        "job %s: %s mapped onto the student's tokens: %d exact, %d chain, %d split, %d CE-only",
        job.id, src.name, shares.exact, shares.chain, shares.split, shares.none,
    )  # fmt: skip
    return shares
