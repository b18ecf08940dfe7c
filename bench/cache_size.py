"""Cache size and fidelity at k = 8..128 vs full-vocabulary float16 (the seeds' approach)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from bench.common import batches, dataset, models, samples
from distillq.core.job.models import load_causal_lm, load_tokenizer
from distillq.storage.cache import _COMPRESSION, CacheWriter, ShardMeta

KS = (8, 16, 32, 64, 128)


@torch.no_grad()
def teacher_logprobs(root: Path, records: int) -> tuple[list, list[torch.Tensor]]:
    m = models(root)
    model, tok = load_causal_lm(m["teacher"]), load_tokenizer(m["teacher"])
    ss = samples(dataset(root, records), tok)
    out = []
    for ids, mask, rows, cols, _ in batches(ss, 16):
        logits = model(input_ids=ids, attention_mask=mask).logits[rows, cols].float()
        out.append(torch.log_softmax(logits, -1))
    return ss, out


def measure(root: Path, records: int = 200) -> dict[str, Any]:
    ss, lps = teacher_logprobs(root, records)
    full = torch.cat(lps)  # [P, V]
    positions, vocab = full.shape
    result: dict[str, Any] = {"positions": positions, "vocab": vocab, "k": {}}
    for k in KS:
        top = torch.topk(full, k, dim=-1)
        path = root / f"cache-k{k}.h5"
        meta = ShardMeta(0, vocab, k, 1.0, "t", "tok", (0, len(ss)))
        with CacheWriter(path, meta) as w:
            start = 0
            for s in ss:
                n = len(s.target_positions())
                w.add(
                    s.record_id,
                    np.asarray(s.input_ids),
                    np.asarray(s.target_positions()),
                    top.indices[start : start + n].numpy(),
                    top.values[start : start + n].to(torch.float16).numpy(),
                )
                start += n
        mass = top.values.exp().sum(-1)
        # The sparse reconstruction: top-k as stored (fp16), the tail spread evenly over V − k.
        stored = top.values.to(torch.float16).float()
        tail = (1 - stored.exp().sum(-1, keepdim=True)).clamp(min=1e-12)
        recon = torch.full_like(full, 0.0) + torch.log(tail / (vocab - k))
        recon.scatter_(-1, top.indices, stored)
        kl = (full.exp() * (full - recon)).sum(-1)
        result["k"][k] = {
            "bytes_per_position": round(path.stat().st_size / positions, 1),
            "captured_mass": round(mass.mean().item(), 4),
            "kl_full_vs_sparse": round(kl.mean().item(), 4),
        }
        path.unlink()
    path = root / "cache-full.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset(
            "logprobs", data=full.to(torch.float16).numpy(), chunks=(256, vocab), **_COMPRESSION
        )
    result["full_fp16_bytes_per_position"] = round(path.stat().st_size / positions, 1)
    result["full_fp16_raw_bytes_per_position"] = 2 * vocab
    path.unlink()
    return result
