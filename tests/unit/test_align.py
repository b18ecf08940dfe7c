"""Cross-tokenizer alignment on real tokenizers of different families (llama.cpp's vocab files:
GPT-2 and Qwen2 byte-level BPE, Phi-3 SentencePiece with byte fallback): spans match bytes,
mapped targets are proper distributions equal to the teacher's where the texts match, and with
one tokenizer on both sides the path gives exactly today's targets, loss and gradients."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from distillq.core.align.mapping import Shares, student_targets, vocab_map
from distillq.core.align.spans import align
from distillq.core.align.tokens import fallback_ids, vocab_bytes
from distillq.core.maths.losses import bucketed

TEXT = (
    "The quick brown fox jumps over the lazy dog. Naïve café owners in 東京 said: "
    '"It\'s 3.14, not 22/7!"\n    def area(r):\n        return 3.14159 * r ** 2\n'
)
FAMILIES = ("gpt2", "qwen2", "phi3")


def tokens_of(tok, text: str) -> np.ndarray:
    return np.asarray(tok.encode(text, add_special_tokens=False), np.int64)


def dense_teacher(tokens: np.ndarray, vocab: int, seed: int = 0) -> torch.Tensor:
    """A teacher's full log-distribution at each position, peaked on the actual next token
    (so the chain rule's tokens are in the top-k, as a trained teacher's mostly are)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(len(tokens), vocab, generator=g) * 2
    logits[torch.arange(len(tokens)), torch.as_tensor(tokens)] += 12
    return torch.log_softmax(logits, -1)


def top_k(logp: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    lp, ids = logp.topk(k, dim=-1)
    return ids.numpy(), lp.numpy()


def test_a_teacher_token_maps_to_the_student_token_of_the_same_bytes_only():
    teacher = [b" Return", b" the", None, b"xyz", b"."]
    student = [b" Ret", b" the", b" th", b"urn", None, b".", b"."]
    # " Return" the student spells in pieces: no target (its mass stays in the tail bucket).
    assert vocab_map(teacher, student).tolist() == [-1, 1, -1, -1, 5]
    # Two ids of one text: the one the tokenizer writes, not its byte-fallback twin.
    assert vocab_map(teacher, student, frozenset({5})).tolist() == [-1, 1, -1, -1, 6]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_vocabulary_s_bytes_spell_the_text_back(real_tokenizers, family):
    tok = real_tokenizers(family)
    vb = vocab_bytes(tok)
    spelled = b"".join(vb[i] for i in tokens_of(tok, TEXT))
    # SentencePiece writes a space before the first word; the aligner allows for it.
    assert spelled in (TEXT.encode(), b" " + TEXT.encode())
    assert vb[tok.eos_token_id] is None  # special tokens stand for no text


@pytest.mark.parametrize("teacher", FAMILIES)
@pytest.mark.parametrize("student", FAMILIES)
def test_spans_cover_both_sequences_and_match_their_bytes(real_tokenizers, teacher, student):
    tt, st = real_tokenizers(teacher), real_tokenizers(student)
    tb, sb = vocab_bytes(tt), vocab_bytes(st)
    t_ids, s_ids = tokens_of(tt, TEXT), tokens_of(st, TEXT)
    spans = align([tb[i] for i in t_ids], [sb[i] for i in s_ids])
    assert spans[0].teacher[0] == 0 and spans[-1].teacher[1] == len(t_ids)
    assert spans[-1].student[1] == len(s_ids)
    for a, b in itertools.pairwise(spans):
        assert a.teacher[1] == b.teacher[0] and a.student[1] == b.student[0]  # no gap, no overlap
    kinds = {"exact": 0, "chain": 0, "split": 0, "none": 0}
    for sp in spans:
        kinds[sp.kind] += sp.student[1] - sp.student[0]
        if sp.kind != "none":
            tbytes = b"".join(tb[i] for i in t_ids[sp.teacher[0] : sp.teacher[1]])
            sbytes = b"".join(sb[i] for i in s_ids[sp.student[0] : sp.student[1]])
            assert tbytes.strip() == sbytes.strip()  # only the first word's SPM space differs
    if teacher == student:
        assert kinds == {"exact": len(s_ids), "chain": 0, "split": 0, "none": 0}
    else:  # real tokenizers of English and code share most boundaries
        assert (len(s_ids) - kinds["none"]) / len(s_ids) > 0.7, kinds


def test_with_one_tokenizer_the_targets_loss_and_gradients_are_today_s(real_tokenizers):
    tok = real_tokenizers("qwen2")
    vb = vocab_bytes(tok)
    ids = tokens_of(tok, TEXT)
    logp = dense_teacher(ids, len(tok))
    top_ids, top_lp = top_k(logp, 16)
    spans = align([vb[i] for i in ids], [vb[i] for i in ids])
    shares = Shares()
    got_ids, got_lp = student_targets(spans, ids, ids, top_ids, top_lp, vocab_map(vb, vb), shares)
    assert (got_ids == top_ids).all() and (got_lp == top_lp).all()
    assert (shares.exact, shares.chain, shares.none) == (len(ids), 0, 0)

    student_logits = torch.randn(len(ids), len(tok), generator=torch.Generator().manual_seed(1))

    def loss_and_grad(t_ids: np.ndarray, t_lp: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        z = student_logits.clone().requires_grad_(True)
        loss = bucketed(
            "forward_kl", z, None, 1.0, torch.as_tensor(t_ids), torch.as_tensor(t_lp), None, 0.5
        ).mean()
        loss.backward()
        assert z.grad is not None
        return loss.detach(), z.grad

    today, aligned = loss_and_grad(top_ids, top_lp), loss_and_grad(got_ids, got_lp)
    assert torch.equal(today[0], aligned[0]) and torch.equal(today[1], aligned[1])


@pytest.mark.parametrize(("teacher", "student"), [("gpt2", "qwen2"), ("qwen2", "phi3")])
def test_mapped_targets_are_the_teacher_s_probabilities_on_the_student_s_tokens(
    real_tokenizers, teacher, student
):
    tt, st = real_tokenizers(teacher), real_tokenizers(student)
    tb, sb = vocab_bytes(tt), vocab_bytes(st)
    t_ids, s_ids = tokens_of(tt, TEXT), tokens_of(st, TEXT)
    logp = dense_teacher(t_ids, len(tt))
    top_ids, top_lp = top_k(logp, 16)
    vmap = vocab_map(tb, sb, fallback_ids(st))
    spans = align([tb[i] for i in t_ids], [sb[i] for i in s_ids])
    shares = Shares()
    ids, lps = student_targets(spans, t_ids, s_ids, top_ids, top_lp, vmap, shares, tb, sb)
    assert shares.exact + shares.chain + shares.split + shares.none == len(s_ids)
    assert shares.chain + shares.split > 0 and shares.none < len(s_ids) / 4
    # Every row is a distribution over listed ids + a tail: mass ≤ 1, no id listed twice.
    mass = np.exp(lps.astype(np.float64)).sum(-1)
    assert (mass <= 1 + 1e-5).all()
    for row_ids, row_lp in zip(ids, lps, strict=True):
        listed = row_ids[np.isfinite(row_lp)]
        assert len(set(listed.tolist())) == len(listed)
    splits_checked = 0
    for sp in spans:
        (a, b), (c, d) = sp.teacher, sp.student
        if sp.kind == "exact":
            # Each listed student id carries the teacher's mass on the top-k token of its text
            # (the student has it whole; the others stay in the tail).
            listed_mass = 0.0
            for sid, lp in zip(ids[c], lps[c], strict=True):
                if np.isfinite(lp):
                    sources = [int(t) for t in top_ids[a] if vmap[t] == sid]
                    assert sources and all(tb[t] == sb[sid] for t in sources)
                    want = sum(float(logp[a, t].exp()) for t in sources)
                    assert np.exp(float(lp)) == pytest.approx(want, rel=1e-4)
                    listed_mass += want
            mapped = [int(t) for t in top_ids[a] if vmap[t] >= 0]
            assert listed_mass == pytest.approx(sum(float(logp[a, t].exp()) for t in mapped))
            # The teacher's token maps to the very id the student wrote for the same bytes (not
            # a byte-fallback twin it never writes), so that id carries the teacher's mass.
            # (The first word differs by SentencePiece's leading space: "The" against " The".)
            if tb[t_ids[a]] == sb[s_ids[c]]:
                assert vmap[t_ids[a]] == s_ids[c], (tb[t_ids[a]], vmap[t_ids[a]], s_ids[c])
            if t_ids[a] in top_ids[a] and tb[t_ids[a]] == sb[s_ids[c]]:
                assert s_ids[c] in ids[c]
        elif sp.kind == "chain":
            # The chain rule: the student's token is the teacher's tokens in a row.
            want = sum(float(logp[r, t_ids[r]]) for r in range(a, b))
            assert ids[c, 0] == s_ids[c] and lps[c, 0] == pytest.approx(want, abs=1e-4)
            assert not np.isfinite(lps[c, 1:]).any()
        elif sp.kind == "split" and np.isfinite(lps[c:d, 0]).all() and lps[c, 0] != 0:
            # Split: the steps' probabilities multiply to the teacher's mass on the whole
            # token's text (over its top-k), and the first is its mass on the first piece.
            p = np.exp(logp[a].numpy().astype(np.float64))
            whole = b"".join(sb[int(x)] for x in s_ids[c:d])
            first = sb[int(s_ids[c])]
            listed = [int(t) for t in top_ids[a]]

            def mass(prefix: bytes, listed=listed, p=p) -> float:
                return sum(p[t] for t in listed if tb[t] and tb[t].startswith(prefix))

            assert lps[c:d, 0].astype(np.float64).sum() == pytest.approx(
                np.log(mass(whole)), abs=1e-4
            )
            assert lps[c, 0] == pytest.approx(np.log(mass(first)), abs=1e-4)
            splits_checked += 1
        elif sp.kind == "none" and c < d:
            # Unaligned: the student's own next token, one-hot (KD there is its CE).
            assert (ids[c:d, 0] == s_ids[c:d]).all() and (lps[c:d, 0] == 0).all()
    if student == "phi3":
        assert splits_checked > 0  # SentencePiece cuts digits finer: split spans are checked


def test_streams_that_start_and_end_at_different_points_of_the_text_still_align(
    real_tokenizers,
):
    """A text record's first token predicts nothing, so the teacher's targets start after its
    first token and the student's after its own; truncation at a token count cuts each at
    another byte. The common stretch still aligns; only the ends fall back."""
    tt, st = real_tokenizers("gpt2"), real_tokenizers("qwen2")
    tb, sb = vocab_bytes(tt), vocab_bytes(st)
    t_ids, s_ids = tokens_of(tt, TEXT)[1:], tokens_of(st, TEXT)[3:-5]
    spans = align([tb[i] for i in t_ids], [sb[i] for i in s_ids])
    aligned = sum(sp.student[1] - sp.student[0] for sp in spans if sp.kind != "none")
    assert aligned / len(s_ids) > 0.7
    assert spans[0].kind == "none" or spans[0].student[0] == 0
