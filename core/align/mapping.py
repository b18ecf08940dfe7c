"""Teacher targets (top-k in the teacher's vocabulary, at the teacher's positions) become the
student's targets (in its vocabulary, at its positions), span by span (``spans.align``):

- ``exact`` (one teacher token, one student token): each of the teacher's top-k ids that the
  student has whole maps to it (``vocab_map``, GOLD's exact-match part); the mass of the
  others and past the top-k stays in the tail bucket the loss already has, so the target is
  a distribution over the student's listed ids + "anything else";
- ``chain`` (several teacher tokens, one student token): the student's token is those teacher
  tokens in a row, so its log-prob is the sum of theirs (each read from its position's top-k);
  one listed id, the rest is tail: a two-outcome distribution, still a proper one;
- ``split`` (one teacher token, several student tokens s_1..s_m): the teacher's next-token
  distribution, read as a distribution over text, gives each student step: P(s_i | s_<i) =
  M(s_1..s_i) / M(s_1..s_(i-1)), where M(x) is the teacher's top-k mass on tokens whose bytes
  start with x. Nested prefixes make each ratio ≤ 1: again one listed id and a tail;
- ``none``: the student's actual next token with log-prob 0, a one-hot target, so the KD term
  there is exactly its CE: the position falls back to CE, and is counted.

Slots past the entries are −inf (unlisted: the loss leaves them out). With one tokenizer on
both sides every span is ``exact`` and the map is the identity: the targets come back
unchanged (tests/unit/test_align.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from distillq.core.align.spans import Span


def vocab_map(
    teacher: list[bytes | None],
    student: list[bytes | None],
    fallback: frozenset[int] = frozenset(),
) -> np.ndarray:
    """Teacher id → the student id of the same bytes, or −1 (no such student token, or a
    special token): GOLD's exact-match part. A teacher token the student would spell in pieces
    (" Return" as " Ret" + "urn") maps to nothing; its mass stays in the tail bucket.

    Where the student has two ids of one text, the one its tokenizer writes: not a
    byte-fallback piece (``fallback``, ``tokens.fallback_ids``: a SentencePiece vocabulary
    spells ``.`` both as ``.`` and as ``<0x2E>`` and only ever writes the first; targets on the
    second taught the student a token it never sees and made cross-tokenizer KD lose to CE),
    else the lower id.

    Measured against giving such a token's mass to the student token its text starts with
    (its first piece) and against ULD on the unmapped mass (bench/cross_mapping.py): exact
    match closed more of the same-tokenizer gain than the first-piece mapping at every seed;
    ULD added a little more (within a seed's spread) but is not a divergence between
    distributions over the same outcomes, and needs the student's top-k over its whole
    vocabulary at every position."""
    index = written_ids(student, fallback)
    return np.asarray([index.get(b, -1) if b else -1 for b in teacher], np.int64)


def written_ids(
    vocab: list[bytes | None], fallback: frozenset[int] = frozenset()
) -> dict[bytes, int]:
    """Bytes → the id a tokenizer writes for them: not a byte-fallback piece where a piece
    spells the same bytes, else the lower id."""
    index: dict[bytes, int] = {}
    for i, b in enumerate(vocab):
        if b and (b not in index or (index[b] in fallback and i not in fallback)):
            index[b] = i
    return index


@dataclass
class Shares:
    """Student target positions by how they were aligned."""

    exact: int = 0
    chain: int = 0
    split: int = 0
    none: int = 0

    def add(self, kind: str, n: int) -> None:
        setattr(self, kind, getattr(self, kind) + n)


def student_targets(
    spans: list[Span],
    teacher_tokens: np.ndarray,
    student_tokens: np.ndarray,
    top_ids: np.ndarray,
    top_logprobs: np.ndarray,
    vmap: np.ndarray,
    shares: Shares,
    teacher_bytes: list[bytes | None] | None = None,
    student_bytes: list[bytes | None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """[P_s, k] ids and log-probs for the student's target tokens.

    ``teacher_tokens`` [P_t]: the tokens the teacher's target positions predict, with their
    top-k ``top_ids``/``top_logprobs`` [P_t, k]; ``student_tokens`` [P_s]: the student's;
    the vocabularies' bytes (``tokens.vocab_bytes``) serve ``split`` spans (without them,
    those fall back to CE)."""
    k = top_ids.shape[1]
    ids = np.zeros((len(student_tokens), k), np.int64)
    lps = np.full((len(student_tokens), k), -np.inf, np.float32)
    for sp in spans:
        (a, b), (c, d) = sp.teacher, sp.student
        if c == d:
            continue  # teacher tokens with no student token (a special one): nothing to teach
        kind = sp.kind
        if kind == "exact":
            mapped = vmap[top_ids[a]]
            keep = mapped >= 0
            # Several teacher tokens may start with one student token: their masses add up.
            sid, inverse = np.unique(mapped[keep], return_inverse=True)
            mass = np.zeros(len(sid), np.float64)
            np.add.at(mass, inverse, np.exp(top_logprobs[a][keep].astype(np.float64)))
            order = np.argsort(-mass, kind="stable")
            ids[c, : len(sid)] = sid[order]
            lps[c, : len(sid)] = np.log(mass[order])
        elif kind == "chain":
            total = 0.0
            for r in range(a, b):
                hit = np.nonzero(top_ids[r] == teacher_tokens[r])[0]
                if len(hit) == 0:
                    kind = "none"  # a token of the span is outside its top-k: p unknown
                    break
                total += float(top_logprobs[r, hit[0]])
            if kind == "chain":
                ids[c, 0], lps[c, 0] = student_tokens[c], total
        elif kind == "split":
            steps = None
            if teacher_bytes is not None and student_bytes is not None:
                steps = _split_steps(
                    [student_bytes[int(x)] for x in student_tokens[c:d]],
                    [teacher_bytes[int(x)] for x in top_ids[a]],
                    top_logprobs[a],
                )
            if steps is None:
                kind = "none"
            else:
                ids[c:d, 0], lps[c:d, 0] = student_tokens[c:d], steps
        if kind == "none":
            ids[c:d, 0], lps[c:d, 0] = student_tokens[c:d], 0.0
        shares.add(kind, d - c)
    return ids, lps


def _split_steps(
    pieces: list[bytes | None], top_bytes: list[bytes | None], top_lp: np.ndarray
) -> np.ndarray | None:
    """Log P(s_i | s_<i) for the pieces of one teacher token, from the teacher's top-k mass on
    each prefix; None where a prefix has none of it (the teacher's own token is off its
    top-k)."""
    p = np.exp(top_lp.astype(np.float64))
    prefix, prev, out = b"", 1.0, []
    for piece in pieces:
        prefix += piece or b""
        mass = float(
            sum(q for b, q in zip(top_bytes, p, strict=True) if b and b.startswith(prefix))
        )
        if mass <= 0.0:
            return None
        out.append(np.log(min(1.0, mass / prev)))
        prev = mass
    return np.asarray(out, np.float32)
