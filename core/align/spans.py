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


PROBE = 64
"""Bytes of one stream looked for in the other to find where their common text starts."""


def _lead(t: bytes, s: bytes) -> tuple[int, int]:
    """Where the teacher's and the student's streams start, in common coordinates: the two may
    begin at different points of one text (a text record's first token predicts nothing, so
    the teacher's targets start after its first token and the student's after its own)."""
    if not t or not s or t.startswith(s[:PROBE]) or s.startswith(t[:PROBE]):
        return 0, 0
    if (x := s.find(t[:PROBE])) > 0:
        return x, 0  # the student's stream holds x bytes more at its start: the teacher's at x
    if (y := t.find(s[:PROBE])) > 0:
        return 0, y
    return 0, 0


def align(teacher: list[bytes | None], student: list[bytes | None]) -> list[Span]:
    """Spans covering both sequences in order (None: a special token, no text).

    Tokens get byte offsets in one coordinate system; a span opens where a teacher token and a
    student token start at the same offset and closes where their ends meet again. Tokens that
    start where the other side has no boundary are spans of their own (``none``): at the start
    and end of streams that cover different stretches of the text (truncation at different
    token counts), and where the texts differ."""
    t, s = _strip_prefix_space(teacher, student)
    tt = b"".join(x for x in t if x is not None)
    ss = b"".join(x for x in s if x is not None)
    t_pos, s_pos = _lead(tt, ss)
    spans: list[Span] = []
    i = j = 0
    while i < len(t) or j < len(s):
        if i >= len(t) or j >= len(s):
            spans.append(Span((i, len(t)), (j, len(s)), "none"))  # one side ran out of text
            break
        ti, sj = t[i], s[j]
        if ti is None or sj is None:
            # A special token on either side stands for no text: it aligns with nothing.
            spans.append(Span((i, i + (ti is None)), (j, j + (sj is None)), "none"))
            i, j = i + (ti is None), j + (sj is None)
            continue
        if t_pos != s_pos:  # out of step: the side behind moves on alone
            if t_pos < s_pos:
                spans.append(Span((i, i + 1), (j, j), "none"))
                t_pos, i = t_pos + len(ti), i + 1
            else:
                spans.append(Span((i, i), (j, j + 1), "none"))
                s_pos, j = s_pos + len(sj), j + 1
            continue
        a, b = i, j
        t_end, s_end = t_pos + len(ti), s_pos + len(sj)
        i, j = i + 1, j + 1
        while t_end != s_end:
            if t_end < s_end and i < len(t) and t[i] is not None:
                t_end += len(t[i])  # type: ignore[arg-type]
                i += 1
            elif s_end < t_end and j < len(s) and s[j] is not None:
                s_end += len(s[j])  # type: ignore[arg-type]
                j += 1
            else:
                break
        t_pos, s_pos = t_end, s_end
        same = b"".join(t[a:i]) == b"".join(s[b:j])  # type: ignore[arg-type]
        kind: Kind = "none"
        if same and j - b == 1:
            kind = "exact" if i - a == 1 else "chain"
        elif same and i - a == 1:
            kind = "split"
        spans.append(Span((a, i), (b, j), kind))
    return spans
