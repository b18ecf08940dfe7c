"""The teacher's LM head in chunks of positions (memory O(chunk × V)) writes what one pass does."""

from __future__ import annotations

import numpy as np

from distillq.core.job.data import TokenizeStats, tokenize_record
from distillq.core.job.models import load_causal_lm, load_tokenizer
from distillq.core.targets.topk import TopK
from distillq.core.teacher.local import chunk_positions, score_batch


def test_chunked_head_gives_the_same_targets(tiny_models, text_records):
    model = load_causal_lm(tiny_models["teacher"], "teacher")
    tok = load_tokenizer(tiny_models["teacher"])
    samples = [
        tokenize_record(r, i, tok, 96, TokenizeStats()) for i, r in enumerate(text_records[:6])
    ]
    samples = [s for s in samples if s is not None]
    vocab = model.get_output_embeddings().weight.shape[0]
    small = 7 * vocab * 4 * 3  # 7 positions per chunk: a batch of ~500 goes in ~70 chunks
    assert chunk_positions(vocab, small) == 7
    whole = score_batch(model, samples, TopK(16), 1.0)
    chunked = score_batch(model, samples, TopK(16), 1.0, budget=small)
    for a, b in zip(whole, chunked, strict=True):
        assert a.ids.shape == b.ids.shape
        np.testing.assert_allclose(
            a.logprobs.astype(np.float32), b.logprobs.astype(np.float32), atol=2e-3
        )
        # Ids agree except where two entries tie to within the matmul's last bits.
        assert (a.ids == b.ids).mean() > 0.99


def test_chunk_size_shrinks_with_the_vocabulary():
    assert chunk_positions(4_096) > chunk_positions(151_936) >= 1
    assert chunk_positions(151_936) * 151_936 * 12 <= 256 << 20
