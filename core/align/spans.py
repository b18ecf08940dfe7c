"""Span alignment: two token sequences of one text, matched where their byte offsets meet.

Walking both sequences, a span closes wherever the bytes consumed on each side are equal: one
teacher token to one student token (``exact``), several teacher tokens to one student token
(``chain``: the student's token is the teacher's tokens in a row, so its probability is their
product, the chain rule), one teacher token to several student tokens (``split``: digits and
runs of spaces, which SentencePiece vocabularies cut finer), or anything else (several to
several, special tokens, text that differs): ``none``, where the student falls back to CE.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["exact", "chain", "split", "none"]


@dataclass(frozen=True)
class Span:
    teacher: tuple[int, int]
    """[a, b): the teacher tokens of the span."""
    student: tuple[int, int]
    kind: Kind


def _strip_prefix_space(
    t: list[bytes | None], s: list[bytes | None]
) -> tuple[list[bytes | None], list[bytes | None]]:
    """SentencePiece writes a space before the first word (``▁Hello``) that byte-level BPE does
    not: where the two texts differ by exactly that space, the side that has it drops it."""
    tt = b"".join(x for x in t if x is not None)
    ss = b"".join(x for x in s if x is not None)
    if ss == b" " + tt:
        return t, _drop_first_space(s)
    if tt == b" " + ss:
        return _drop_first_space(t), s
    return t, s


def _drop_first_space(seq: list[bytes | None]) -> list[bytes | None]:
    first = next(i for i, x in enumerate(seq) if x)
    out = list(seq)
    out[first] = seq[first][1:]  # type: ignore[index]
    return out


def align(teacher: list[bytes | None], student: list[bytes | None]) -> list[Span]:
    """Spans covering both sequences in order (None: a special token, no text)."""
    t, s = _strip_prefix_space(teacher, student)
    spans: list[Span] = []
    i = j = 0
    while i < len(t) or j < len(s):
        ti = t[i] if i < len(t) else b""
        sj = s[j] if j < len(s) else b""
        if i >= len(t) or j >= len(s):
            spans.append(Span((i, len(t)), (j, len(s)), "none"))  # one side ran out of text
            break
        if ti is None or sj is None:
            # A special token on either side stands for no text: it aligns with nothing.
            spans.append(Span((i, i + (ti is None)), (j, j + (sj is None)), "none"))
            i, j = i + (ti is None), j + (sj is None)
            continue
        a, b = i, j
        tb, sb = len(ti), len(sj)
        i, j = i + 1, j + 1
        while tb != sb:
            if tb < sb and i < len(t) and t[i] is not None:
                tb += len(t[i])  # type: ignore[arg-type]
                i += 1
            elif sb < tb and j < len(s) and s[j] is not None:
                sb += len(s[j])  # type: ignore[arg-type]
                j += 1
            else:
                break
        same = b"".join(t[a:i]) == b"".join(s[b:j])  # type: ignore[arg-type]
        kind: Kind = "none"
        if same and j - b == 1:
            kind = "exact" if i - a == 1 else "chain"
        elif same and i - a == 1:
            kind = "split"
        spans.append(Span((a, i), (b, j), kind))
    return spans
