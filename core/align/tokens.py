"""What text each token of a vocabulary stands for, as bytes: the common ground of two
tokenizers. Alignment compares bytes, not strings, because byte-level BPE splits a character
across tokens (``é`` can be two tokens of one byte each).

Two kinds of vocabulary cover the tokenizers in use: byte-level BPE (GPT-2, Llama 3, Qwen,
SmolLM: each symbol of a token stands for one byte, through GPT-2's byte-to-unicode table) and
SentencePiece-style (Llama 2, Mistral, Phi-3, Gemma: ``▁`` is a space, ``<0xNN>`` a raw byte,
anything else its UTF-8). Special tokens (BOS, EOS, turn markers) stand for no text: None.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

SPM_SPACE = "▁"
_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@lru_cache(maxsize=1)
def unicode_to_byte() -> dict[str, int]:
    """GPT-2's table, inverted: the printable symbol byte-level BPE writes for each byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def is_byte_level(tok: Any) -> bool:
    """Whether ``tok`` (a fast tokenizer) decodes through the byte-level table."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        return False
    decoder = json.loads(backend.to_str()).get("decoder") or {}
    return "ByteLevel" in json.dumps(decoder)


def vocab_bytes(tok: Any) -> list[bytes | None]:
    """Per id, the bytes the token stands for; None for special tokens and for ids past the
    tokenizer (a padded head)."""
    special = set(tok.all_special_ids) | {
        i for i, t in getattr(tok, "added_tokens_decoder", {}).items() if t.special
    }
    pieces = tok.convert_ids_to_tokens(list(range(len(tok))))
    out: list[bytes | None] = []
    if is_byte_level(tok):
        table = unicode_to_byte()
        for i, p in enumerate(pieces):
            if i in special or p is None:
                out.append(None)
            elif all(ch in table for ch in p):
                out.append(bytes(table[ch] for ch in p))
            else:
                out.append(p.encode())  # an added token written as plain text
    else:
        for i, p in enumerate(pieces):
            if i in special or p is None:
                out.append(None)
            elif m := _BYTE_PIECE.match(p):
                out.append(bytes([int(m.group(1), 16)]))
            else:
                out.append(p.replace(SPM_SPACE, " ").encode())
    return out


def fallback_ids(tok: Any) -> frozenset[int]:
    """SentencePiece's byte-fallback pieces (``<0x2E>``): the tokenizer writes one only where
    no piece spells the bytes, so where a piece does (``.``), the piece is the token the student
    really writes, and the one a target must name."""
    if is_byte_level(tok):
        return frozenset()
    pieces = tok.convert_ids_to_tokens(list(range(len(tok))))
    return frozenset(i for i, p in enumerate(pieces) if p is not None and _BYTE_PIECE.match(p))
