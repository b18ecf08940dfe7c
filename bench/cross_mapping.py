"""Across tokenizers, which vocabulary mapping: an ablation in one process (no queues), so
the arms differ only in how the teacher's top-k reaches the student's vocabulary.

SmolLM2-135M-Instruct scores 216 records of the stdlib's sources (top-16, 128 tokens); a
random-init student of Phi-3's real tokenizer (SentencePiece, 32,064) trains 2 epochs on them
with distillq's own alignment (``core/align``) and loss (``core/maths/losses.kd_loss``, α = 0.5)
under each mapping, at three seeds; the same student shape on SmolLM2's own tokenizer gives
the same-tokenizer gain to compare with. Held-out bits per byte on 24 other records.

- ``prefix``: each teacher token's mass goes to the student token its text starts with (its
  first piece; the product's mapping until this bench chose ``exact``);
- ``exact``: only teacher tokens the student has whole are listed; the rest of the mass stays
  in the tail bucket (GOLD's exact-match part; the product's ``vocab_map``);
- ``exact+uld``: ``exact`` plus ULD (Boizard et al., 2024) on the mass no mapping reaches:
  the L1 distance between the teacher's and the student's top-k probabilities, each sorted
  (identities ignored), added with weight 1 (GOLD's default) at exactly aligned positions.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from distillq.app.demo_models import TinyLlama, demo_split_records, llama
from distillq.app.real_models import fetch, tokenizer
from distillq.core.align.mapping import Shares, student_targets, vocab_map, written_ids
from distillq.core.align.spans import align
from distillq.core.align.tokens import fallback_ids, vocab_bytes
from distillq.core.maths.losses import kd_loss

K, LENGTH, RECORDS, HELD = 16, 128, 240, 24
SEEDS = (0, 1, 2)
EPOCHS, BATCH, LR, ALPHA = 2, 8, 2e-3, 0.5
SHAPE = TinyLlama(hidden=128, layers=4, heads=4, intermediate=384, max_positions=256)
ARMS = ("same-ce", "same-kd", "cross-ce", "prefix", "exact", "exact+uld")

Item = tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]
"""(input ids, target ids, target log-probs, the teacher's own top-k log-probs at each exactly
aligned position, for ULD)."""


class Setup:
    def __init__(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        texts = [r["text"] for r in demo_split_records(RECORDS)]
        self.train, self.held = texts[:-HELD], texts[-HELD:]
        t = fetch("smollm2")
        self.ttok = AutoTokenizer.from_pretrained(str(t.hf))
        self.stok = AutoTokenizer.from_pretrained(str(tokenizer("phi3")))
        self.tb, self.sb = vocab_bytes(self.ttok), vocab_bytes(self.stok)
        teacher = AutoModelForCausalLM.from_pretrained(str(t.hf), dtype=torch.float32).eval()
        self.scored = [self._score(teacher, x) for x in self.train]
        fb = fallback_ids(self.stok)
        exact = vocab_map(self.tb, self.sb, fb)
        self.maps = {"prefix": _first_piece(self.tb, self.sb, exact, fb), "exact": exact}

    def _score(self, teacher: Any, text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ids = self.ttok(text)["input_ids"][:LENGTH]
        with torch.no_grad():
            lp = torch.log_softmax(teacher(torch.tensor([ids])).logits[0, :-1].float(), -1)
        top = lp.topk(K, -1)
        return np.asarray(ids), top.indices.numpy(), top.values.numpy()

    def same(self, kd: bool) -> list[Item]:
        return [(ids, ti if kd else None, tl if kd else None, None) for ids, ti, tl in self.scored]

    def cross(self, mapping: str | None) -> tuple[list[Item], Shares]:
        out: list[Item] = []
        shares = Shares()
        for text, (t_ids, top_i, top_v) in zip(self.train, self.scored, strict=True):
            s_ids = np.asarray(self.stok(text)["input_ids"][:LENGTH])
            if mapping is None:
                out.append((s_ids, None, None, None))
                continue
            t_next, s_next = t_ids[1:], s_ids[1:]
            spans = align([self.tb[int(x)] for x in t_next], [self.sb[int(x)] for x in s_next])
            ids, lps = student_targets(
                spans, t_next, s_next, top_i, top_v, self.maps[mapping], shares, self.tb, self.sb
            )
            raw = np.full((len(s_next), K), -np.inf, np.float32)
            for sp in spans:
                if sp.kind == "exact":
                    raw[sp.student[0]] = top_v[sp.teacher[0]]
            out.append((s_ids, ids, lps, raw))
        return out, shares


def _first_piece(
    tb: list[bytes | None], sb: list[bytes | None], exact: np.ndarray, fb: frozenset[int]
) -> np.ndarray:
    """Teacher id → the longest student token its bytes start with (itself where exact)."""
    index = written_ids(sb, fb)
    longest = max(len(b) for b in index)
    out = exact.copy()
    for i, b in enumerate(tb):
        if b and out[i] < 0:
            for n in range(min(len(b), longest), 0, -1):
                if (hit := index.get(b[:n])) is not None:
                    out[i] = hit
                    break
    return out


def _bpb(model: Any, tok: Any, vb: list[bytes | None], texts: list[str]) -> float:
    nats = nbytes = 0.0
    with torch.no_grad():
        for text in texts:
            ids = tok(text)["input_ids"][:LENGTH]
            logits = model(torch.tensor([ids])).logits[0, :-1]
            y = torch.tensor(ids[1:])
            nats += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
            nbytes += sum(len(vb[i] or b"") for i in ids[1:])
    return nats / nbytes / math.log(2)


def train(data: list[Item], tok: Any, seed: int, uld: float = 0.0) -> Any:
    torch.manual_seed(seed)
    model = llama(SHAPE, len(tok), tok.eos_token_id, 5 + seed)
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    rng = np.random.default_rng(seed)
    steps, step = EPOCHS * math.ceil(len(data) / BATCH), 0
    for _ in range(EPOCHS):
        order = rng.permutation(len(data))
        for b0 in range(0, len(data), BATCH):
            items = [data[i] for i in order[b0 : b0 + BATCH]]
            positions = sum(len(x[0]) - 1 for x in items)
            loss = torch.zeros(())
            for ids, t_ids, t_lp, raw in items:
                logits = model(torch.tensor([ids])).logits[0, :-1]
                y = torch.tensor(ids[1:])
                ti = None if t_ids is None else torch.from_numpy(t_ids)
                tl = None if t_lp is None else torch.from_numpy(t_lp.astype(np.float32))
                a = 1.0 if ti is None else ALPHA
                part, _ = kd_loss(logits, y, ti, tl, alpha=a, temperature=1.0)
                if uld and raw is not None:
                    r = torch.from_numpy(raw)
                    ok = torch.isfinite(r[:, 0])
                    ps = torch.softmax(logits[ok], -1).topk(K, -1).values
                    dist = (ps - r[ok].exp()).abs().sum(-1).sum() / max(1, len(ids) - 1)
                    part = part + (1 - ALPHA) * uld * dist
                loss = loss + part * (len(ids) - 1) / positions
            for g in opt.param_groups:
                cos = 0.1 + 0.45 * (1 + math.cos(math.pi * step / steps))
                g["lr"] = LR * min(1.0, (step + 1) / 10) * cos
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
    return model


def measure() -> dict[str, Any]:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    s = Setup()
    bpb: dict[str, float] = {}
    seconds: dict[str, float] = {}
    shares: dict[str, dict[str, int]] = {}
    for seed in SEEDS:
        for arm in ARMS:
            t0 = time.perf_counter()
            if arm.startswith("same"):
                m = train(s.same(arm == "same-kd"), s.ttok, seed)
                v = _bpb(m, s.ttok, s.tb, s.held)
            else:
                mapping = None if arm == "cross-ce" else arm.split("+")[0]
                data, sh = s.cross(mapping)
                m = train(data, s.stok, seed, uld=1.0 if arm.endswith("+uld") else 0.0)
                v = _bpb(m, s.stok, s.sb, s.held)
                if mapping:
                    shares[arm] = vars(sh)
            bpb[f"{arm}-s{seed}"] = round(v, 4)
            seconds[arm] = round(time.perf_counter() - t0, 1)
            print(f"{arm} seed {seed}: {v:.4f} bits/byte", flush=True)
    ratios: dict[str, list[float | None]] = {}
    for arm in ("prefix", "exact", "exact+uld"):
        ratios[arm] = []
        for seed in SEEDS:
            same = bpb[f"same-ce-s{seed}"] - bpb[f"same-kd-s{seed}"]
            cross = bpb[f"cross-ce-s{seed}"] - bpb[f"{arm}-s{seed}"]
            ratios[arm].append(round(cross / same, 3) if same > 0 else None)
    return {
        "records": len(s.train),
        "held_out": len(s.held),
        "heldout_bpb": bpb,
        "ratio_of_same_tokenizer_gain": ratios,
        "alignment": shares.get("prefix"),
        "arm_seconds": seconds,
    }


if __name__ == "__main__":
    import json
    import sys

    out = measure()
    print(json.dumps(out, indent=2))
    if len(sys.argv) > 1:
        from pathlib import Path

        Path(sys.argv[1]).write_text(json.dumps(out, indent=2) + "\n")
