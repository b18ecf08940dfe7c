"""What each kind of teacher server is asked, and how its answer becomes sparse targets.

Every answer is aligned to the token ids distillq sent (the students' tokenizer), and checked:
a token that does not match what was sent refuses the record by id and position.

- ``vllm``: ``/v1/completions`` with the prompt as token ids and ``prompt_logprobs: k``.
  ``prompt_logprobs[i]`` is the distribution that predicts token i, keyed by token id, and
  always holds token i itself (its rank may be > k). Generation: ``logprobs: k`` with
  ``return_tokens_as_token_ids``, so generated tokens come back as ``token_id:N``.
- ``llama_cpp`` (llama-cpp-python's server, 0.3.36): the completions endpoint takes only
  text, so the text of the ids is sent and re-tokenized there (the enqueue probe checks that
  tokenization matches). ``echo`` + ``logprobs: k`` lists the prompt's tokens without a
  leading BOS, and every token whose id is the BOS id is left out of the list (models whose
  BOS is id 0 lose every id-0 token). Entry ``idx`` of the unfiltered list carries the
  distribution *after* prompt token ``idx`` (``Llama._scores[idx]``): with a BOS-led prompt
  that predicts the token listed beside it; without one it predicts the *next* token: the
  pairing is shifted by one. Either way, entry ``idx`` is the distribution at position
  ``idx`` of what was sent, and that is how it is read here. Entry 0 is always null (the
  OpenAI convention), so position 0 gets no teacher distribution and falls back to CE (a
  one-token completion of the first token would give it, but it doubles the requests and
  their round trips for one position in a hundred; measured, that cost more than it gave).
  Top log-probs are keyed by each token's text (``detokenize`` with errors ignored, special
  tokens as ""), so texts that several ids share cannot be mapped back; they are dropped and
  counted (their mass stays in the tail). Measured quirk: it renders each token into a
  32-byte buffer, so a token whose text is longer (code tokenizers have runs of 40 spaces)
  comes back as "" (``PIECE_BUFFER``).
- ``openai``: legacy completions with ``echo`` and ``logprobs`` (token-id prompts), read with
  the OpenAI convention: entry i predicts token i. Hosted APIs cap k (often 5 or 20).
- ``text``: no log-probs at all (Ollama-class servers): generation only; the student learns
  the teacher's text with CE (sequence-level KD).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from distillq.core.align.tokens import unicode_to_byte
from distillq.core.targets.records import Alignment
from distillq.errors import EndpointError

PIECE_BUFFER = 32
"""llama-cpp-python's ``detokenize`` buffer: longer token texts come back empty."""
MISSING_LOGPROB = float("-inf")
"""A slot with no teacher entry: the loss treats it as not listed (it stays in the tail)."""


class TokenTable:
    """Token ids ↔ the texts llama.cpp-style servers key their top log-probs by."""

    def __init__(self, tok: Any) -> None:
        byte_of = unicode_to_byte()
        special = set(tok.all_special_ids)
        added = {i for i, t in tok.added_tokens_decoder.items() if t.special}
        n = len(tok)
        self.pieces: list[str] = []
        for i, t in enumerate(tok.convert_ids_to_tokens(list(range(n)))):
            if i in special or i in added or t is None:
                self.pieces.append("")
                continue
            if all(c in byte_of for c in t):
                raw = bytes(byte_of[c] for c in t)
            else:  # an added token, or a tokenizer that is not byte-level
                raw = t.replace("▁", " ").encode()
            self.pieces.append(
                "" if len(raw) > PIECE_BUFFER else raw.decode("utf-8", errors="ignore")
            )
        seen: dict[str, int] = {}
        shared: set[str] = set()
        for i, p in enumerate(self.pieces):
            if p in seen:
                shared.add(p)
            seen[p] = i
        self.id_of = {p: i for p, i in seen.items() if p not in shared}
        self.bos_id: int | None = tok.bos_token_id

    def ids(self, texts: dict[str, float]) -> tuple[list[int], list[float], int]:
        """The (id, log-prob) pairs whose text names one token; and how many did not."""
        ids, lps, dropped = [], [], 0
        for text, lp in texts.items():
            i = self.id_of.get(text)
            if i is None or lp is None:
                dropped += 1
            else:
                ids.append(i)
                lps.append(float(lp))
        return ids, lps, dropped


def _rows(k: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((n, k), dtype=np.int64), np.full((n, k), MISSING_LOGPROB, dtype=np.float32)


def _put(ids: np.ndarray, lps: np.ndarray, row: int, pairs: list[tuple[int, float]]) -> int:
    """Top-k of ``pairs`` (unique ids), sorted descending, into ``row``. Returns how many."""
    best: dict[int, float] = {}
    for i, lp in pairs:
        best[i] = max(lp, best.get(i, MISSING_LOGPROB))
    top = sorted(best.items(), key=lambda x: -x[1])[: ids.shape[1]]
    for c, (i, lp) in enumerate(top):
        ids[row, c], lps[row, c] = i, lp
    # Unused slots repeat a listed id at −inf: a valid index the loss masks out.
    if top:
        ids[row, len(top) :] = top[0][0]
    return len(top)


def one_hot(ids: np.ndarray, lps: np.ndarray, row: int, token: int) -> None:
    """CE fallback: the token itself with probability 1 (KD on it equals CE on it)."""
    ids[row, :] = token
    lps[row, :] = MISSING_LOGPROB
    lps[row, 0] = 0.0


def _choice(resp: Any, url: str) -> dict[str, Any]:
    try:
        return dict(resp["choices"][0])
    except (KeyError, IndexError, TypeError):
        raise EndpointError(
            f"teacher endpoint {url} answered without choices[0]: is it an OpenAI-compatible "
            "completions endpoint? check teacher.endpoint and teacher.dialect"
        ) from None


# ---------------------------------------------------------------- scoring


def score_body(dialect: str, model: str, ids: list[int], text: str, k: int) -> dict[str, Any]:
    if dialect == "vllm":
        return {
            "model": model,
            "prompt": ids,
            "max_tokens": 1,
            "temperature": 0.0,
            "prompt_logprobs": k,
        }
    prompt: Any = text if dialect == "llama_cpp" else ids
    return {
        "model": model,
        "prompt": prompt,
        "max_tokens": 1,
        "temperature": 0.0,
        "echo": True,
        "logprobs": k,
    }


def sent_text(tok: Any, ids: list[int]) -> str:
    """The text whose server-side tokenization is ``ids`` (a leading BOS is the server's to add)."""
    body = ids[1:] if ids and ids[0] == tok.bos_token_id and _adds_bos(tok) else ids
    return str(tok.decode(body, skip_special_tokens=False))


def _adds_bos(tok: Any) -> bool:
    return bool(tok.bos_token_id is not None and tok("a")["input_ids"][:1] == [tok.bos_token_id])


def parse_scores(
    dialect: str,
    resp: Any,
    ids: list[int],
    positions: list[int],
    k: int,
    table: TokenTable,
    where: str,
) -> tuple[np.ndarray, np.ndarray, Alignment]:
    """Targets [P, k] (ids, log-probs with −inf where missing) at ``positions`` of ``ids``."""
    choice = _choice(resp, where)
    out_ids, out_lps = _rows(k, len(positions))
    al = Alignment()
    if dialect == "vllm":
        dists = _vllm_prompt(choice, ids, where)
    elif dialect == "llama_cpp":
        dists, al.dropped_entries = _llama_cpp_prompt(choice, ids, table, where)
    else:
        dists, al.dropped_entries = _openai_prompt(choice, ids, table, where)
    for r, p in enumerate(positions):
        pairs = dists.get(p)
        if not pairs:
            one_hot(out_ids, out_lps, r, ids[p + 1])
            al.fallback_positions += 1
        else:
            al.obtained += _put(out_ids, out_lps, r, pairs)
    return out_ids, out_lps, al


Dists = dict[int, list[tuple[int, float]]]
"""Position → (token id, log-prob) pairs of the distribution there (predicting position + 1)."""


def _mismatch(where: str, pos: int, got: Any, want: Any) -> EndpointError:
    return EndpointError(
        f"teacher endpoint {where}: token {pos} came back as {got!r}, sent {want!r}: the "
        "server tokenizes differently from the students' tokenizer; serve the same tokenizer "
        "(or set teacher.tokenizer to the server model's own)"
    )


def _vllm_prompt(choice: dict[str, Any], ids: list[int], where: str) -> Dists:
    plp = choice.get("prompt_logprobs")
    if not isinstance(plp, list):
        raise EndpointError(
            f"teacher endpoint {where} returned no prompt_logprobs: it is not vLLM, or too old; "
            "set teacher.dialect to llama_cpp or openai"
        )
    if len(plp) < len(ids):
        raise EndpointError(
            f"teacher endpoint {where} scored {len(plp)} prompt tokens of {len(ids)} sent"
        )
    dists: Dists = {}
    for i in range(1, len(ids)):
        entry = plp[i] or {}
        if str(ids[i]) not in entry:
            raise _mismatch(where, i, sorted(entry)[:3], ids[i])
        dists[i - 1] = [(int(t), float(v["logprob"])) for t, v in entry.items()]
    return dists


def _llama_cpp_prompt(
    choice: dict[str, Any], ids: list[int], table: TokenTable, where: str
) -> tuple[Dists, int]:
    lp = choice.get("logprobs") or {}
    tokens, tops = lp.get("tokens"), lp.get("top_logprobs")
    if not isinstance(tokens, list) or not isinstance(tops, list):
        raise EndpointError(
            f"teacher endpoint {where} returned no echo log-probs; llama.cpp's native "
            "llama-server refuses echo: serve with llama-cpp-python (python -m llama_cpp.server) "
            "or vLLM, or have the teacher generate (teacher.generate + dialect: text)"
        )
    kept = _listed(ids, tokens, table, where)
    dists: Dists = {}
    dropped = 0
    for j, i in enumerate(kept):
        top = tops[j]
        if not top:
            continue
        pairs_ids, pairs_lps, d = table.ids(top)
        dropped += d
        # entry idx of the unfiltered list is the distribution after prompt token idx; with a
        # BOS-led prompt that list starts after the BOS: either way, at position idx of ids.
        dists[i] = list(zip(pairs_ids, pairs_lps, strict=True))
    return dists, dropped


def _listed(ids: list[int], tokens: list[Any], table: TokenTable, where: str) -> list[int]:
    """Which entries of the unfiltered list the server listed, as indices into it.

    The server drops a leading token whose id is its BOS id (then the list starts one later),
    and leaves out every other token with that id. Its BOS id is ours where we have one; a
    GGUF whose tokenizer has none gets llama.cpp's default for its vocabulary type (11 for
    byte-level BPE, 0 elsewhere: a real token of ours), so it is learned from the answer: the
    id of the first token the list lacks, kept where the whole list then lines up."""
    candidates: list[int | None] = list(dict.fromkeys([table.bos_id, 0, None]))
    first_gap: tuple[int, Any] | None = None
    tried: set[int | None] = set()
    while candidates:
        skip = candidates.pop(0)
        if skip in tried:
            continue
        tried.add(skip)
        lead = 1 if ids and skip is not None and ids[0] == skip else 0
        sent = ids[lead:]
        kept = [i for i, t in enumerate(sent) if t != skip]
        gap = next(
            (
                j
                for j, i in enumerate(kept)
                if j >= len(tokens) or tokens[j] != table.pieces[sent[i]]
            ),
            None,
        )
        if gap is None:
            return kept
        if skip is None:
            first_gap = (kept[gap] + lead, tokens[gap] if gap < len(tokens) else "<end>")
            candidates.append(sent[kept[gap]])  # the server's BOS id, if that is what it lacks
    assert first_gap is not None
    pos, got = first_gap
    raise _mismatch(where, pos, got, table.pieces[ids[pos]])


def _openai_prompt(
    choice: dict[str, Any], ids: list[int], table: TokenTable, where: str
) -> tuple[Dists, int]:
    lp = choice.get("logprobs") or {}
    tokens, tops = lp.get("tokens"), lp.get("top_logprobs")
    if not isinstance(tokens, list) or not isinstance(tops, list) or len(tokens) < len(ids):
        raise EndpointError(
            f"teacher endpoint {where} returned no echo log-probs for the prompt; it may not "
            "support echo with logprobs: have the teacher generate instead (teacher.generate)"
        )
    dists: Dists = {}
    dropped = 0
    for i in range(1, len(ids)):
        if tokens[i] != table.pieces[ids[i]] and table.pieces[ids[i]]:
            raise _mismatch(where, i, tokens[i], table.pieces[ids[i]])
        pairs_ids, pairs_lps, d = table.ids(tops[i] or {})
        dropped += d
        dists[i - 1] = list(zip(pairs_ids, pairs_lps, strict=True))
    return dists, dropped


# ---------------------------------------------------------------- generation


def generate_body(
    dialect: str,
    model: str,
    ids: list[int],
    text: str,
    k: int,
    *,
    max_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "prompt": text if dialect in ("llama_cpp", "text") else ids,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "seed": seed,
    }
    if dialect != "text":
        body["logprobs"] = k
    if dialect == "vllm":
        body["return_tokens_as_token_ids"] = True
    return body


@dataclass
class Generated:
    """A response the teacher wrote: its token ids (ours), targets at each, the text."""

    ids: list[int]
    target_ids: np.ndarray  # [len(ids), k]
    target_logprobs: np.ndarray
    text: str
    stopped: bool
    """It ended by itself (EOS or a stop string), not at max_tokens."""
    alignment: Alignment


def parse_generation(
    dialect: str, resp: Any, tok: Any, table: TokenTable, k: int, where: str
) -> Generated:
    choice = _choice(resp, where)
    text = str(choice.get("text") or "")
    stopped = choice.get("finish_reason") == "stop"
    lp = choice.get("logprobs") or {}
    tokens, tops = lp.get("tokens") or [], lp.get("top_logprobs") or []
    al = Alignment()
    if dialect == "vllm" and tokens and str(tokens[0]).startswith("token_id:"):
        ids = [int(str(t).split(":", 1)[1]) for t in tokens]
        out_ids, out_lps = _rows(k, len(ids))
        for r, top in enumerate(tops[: len(ids)]):
            pairs = [(int(t.split(":", 1)[1]), float(v)) for t, v in (top or {}).items()]
            al.obtained += _put(out_ids, out_lps, r, pairs)
        return Generated(ids, out_ids, out_lps, text, stopped, al)
    # Text only, or token texts: re-tokenize the text as a response is tokenized, then take
    # the server's entry for every token whose byte span matches one of the server's.
    ids = list(tok(text, add_special_tokens=False)["input_ids"])
    out_ids, out_lps = _rows(k, len(ids))
    spans: dict[tuple[int, int], int] = {}
    at = 0
    for jj, t in enumerate(tokens):
        n = len(str(t))
        spans[(at, at + n)] = jj
        at += n
    at = 0
    for r, i in enumerate(ids):
        n = len(table.pieces[i])
        j = spans.get((at, at + n))
        at += n
        if j is not None and j < len(tops) and tops[j] and tokens[j] == table.pieces[i]:
            pairs_ids, pairs_lps, d = table.ids(tops[j])
            al.dropped_entries += d
            if i not in pairs_ids:
                pairs_ids.append(i)  # the sampled token is listed by its own text below
                pairs_lps.append(float(tops[j].get(tokens[j], MISSING_LOGPROB)))
            al.obtained += _put(
                out_ids, out_lps, r, [(a, b) for a, b in zip(pairs_ids, pairs_lps, strict=True)]
            )
        else:
            one_hot(out_ids, out_lps, r, i)
            al.fallback_positions += 1
    return Generated(ids, out_ids, out_lps, text, stopped, al)
