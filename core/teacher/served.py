"""A teacher that is already served: vLLM, llama-cpp-python's server, an OpenAI-compatible API.

``EndpointTeacher`` turns shard items into targets through ``core.endpoint.Pool`` (one
request per sample, ``max_concurrent`` in flight per replica, results in record order) and
``core.dialects`` (what to ask, how to read it). ``probe`` runs at enqueue, before any
compute: the endpoint answers, serves the model, scores a probe string, tokenizes as the
students do, and takes the key.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from distillq.core.job.data import Prompt, Sample
from distillq.core.job.spec import ServedTeacherSpec
from distillq.core.maths.batching import PaddingCount
from distillq.core.targets.records import SparseTargets, draw_seed
from distillq.core.teacher import dialects
from distillq.core.teacher.dialects import TokenTable
from distillq.core.teacher.endpoint import Pool
from distillq.core.teacher.local import Item
from distillq.core.teacher.records import Target, generated_sample
from distillq.errors import EndpointError, SpecError
from distillq.storage.records import Generation

log = logging.getLogger(__name__)

PROBE_TEXT = "The quick brown fox jumps over the lazy dog. 1, 2, 3!"


def api_key(spec: ServedTeacherSpec) -> str | None:
    """The key from the environment variable the spec names (the spec never holds it)."""
    if not spec.api_key_env:
        return None
    key = os.environ.get(spec.api_key_env)
    if not key:
        raise SpecError(
            f"teacher.api_key_env names {spec.api_key_env}, which is not set here; export it "
            "(on every teacher node too), or remove teacher.api_key_env"
        )
    return key


def pool(spec: ServedTeacherSpec, on_error: Callable[[str], None] | None = None) -> Pool:
    return Pool(
        spec.endpoint,
        api_key=api_key(spec),
        key_name=spec.api_key_env,
        max_concurrent=spec.max_concurrent,
        timeout_s=spec.timeout_s,
        retries=spec.retries,
        retry_budget_s=spec.retry_budget_s,
        on_error=on_error,
    )


def detect_dialect(models: Any) -> str:
    """``auto``: vLLM says ``owned_by: vllm``; llama-cpp-python says ``owned_by: me``."""
    owners = {str(m.get("owned_by")) for m in (models or {}).get("data", []) if isinstance(m, dict)}
    if "vllm" in owners:
        return "vllm"
    if "me" in owners:
        return "llama_cpp"
    return "openai"


class EndpointTeacher:
    def __init__(
        self,
        spec: ServedTeacherSpec,
        tok: Any,
        http: Pool,
        dialect: str,
        *,
        max_length: int,
        on_wait: Callable[[], None] | None = None,
    ) -> None:
        self.spec, self.tok, self.http, self.dialect = spec, tok, http, dialect
        self.on_wait = on_wait
        self.table = TokenTable(tok)
        self.max_length = max_length
        self.source = f"endpoint {dialect} {','.join(spec.endpoint)}"

    def run(
        self, items: Iterable[Item], padding: PaddingCount | None = None
    ) -> Iterator[list[Target]]:
        # One request per sample: nothing is padded, so ``padding`` stays untouched.
        return self.http.map_ordered(self._one, items, self.on_wait)

    def _one(self, item: Item) -> list[Target]:
        if isinstance(item, Sample):
            return [self.score(item)]
        return [
            self.answer(item, c) for c in range(self.spec.generate.n if self.spec.generate else 1)
        ]

    def score(self, s: Sample) -> Target:
        if self.dialect == "text":
            raise EndpointError(
                f"teacher endpoint {self.spec.endpoint[0]} gives no log-probs (dialect text), so "
                f"record {s.record_id}, which has a response, cannot be scored"
            )
        body = dialects.score_body(
            self.dialect,
            self.spec.model,
            s.input_ids,
            dialects.sent_text(self.tok, s.input_ids),
            self.spec.top_k,
        )
        resp = self.http.post("/completions", body)
        where = f"{self.spec.endpoint[0]} (record {s.record_id})"
        ids, lps, al = dialects.parse_scores(
            self.dialect,
            resp,
            s.input_ids,
            s.target_positions(),
            self.spec.top_k,
            self.table,
            where,
        )
        return Target(s, SparseTargets(ids, lps.astype(np.float16)), "scored", alignment=al)

    def answer(self, p: Prompt, copy: int) -> Target:
        g = self.spec.generate
        assert g is not None
        body = dialects.generate_body(
            self.dialect,
            self.spec.model,
            p.input_ids,
            dialects.sent_text(self.tok, p.input_ids),
            self.spec.top_k,
            max_tokens=max(1, min(g.max_new_tokens, self.max_length - len(p.input_ids) - 1)),
            temperature=g.temperature,
            top_p=g.top_p,
            seed=draw_seed(g.seed, p.record_id, copy),
        )
        resp = self.http.post("/completions", body)
        got = dialects.parse_generation(
            self.dialect, resp, self.tok, self.table, self.spec.top_k, self.spec.endpoint[0]
        )
        eos = self.tok.eos_token_id
        ids, t_ids, t_lps = got.ids, got.target_ids, got.target_logprobs
        if ids and ids[-1] == eos:
            got.stopped = True
        sample = generated_sample(p, ids, got.stopped, eos)
        extra = len(sample.target_positions()) - len(t_ids)
        if extra > 0:
            # The EOS the teacher ended with: no server lists a distribution for it, so its
            # position trains with CE.
            pad_ids, pad_lps = (
                np.zeros((extra, t_ids.shape[1]), np.int64),
                np.zeros((extra, t_ids.shape[1]), np.float32),
            )
            for r in range(extra):
                dialects.one_hot(pad_ids, pad_lps, r, sample.input_ids[-extra + r])
            t_ids, t_lps = np.concatenate([t_ids, pad_ids]), np.concatenate([t_lps, pad_lps])
            got.alignment.fallback_positions += extra
        kind = "generated_text" if self.dialect == "text" else "generated"
        return Target(
            sample, SparseTargets(t_ids, t_lps.astype(np.float16)), kind, got.text, got.alignment
        )

    def continuations(
        self, prompts: list[tuple[list[int], list[int]]], new_tokens: int
    ) -> list[Generation]:
        """Greedy continuations of (prompt, reference) ids, for the report (as local models do)."""
        out = []
        for prompt, reference in prompts:
            body = dialects.generate_body(
                self.dialect,
                self.spec.model,
                prompt,
                dialects.sent_text(self.tok, prompt),
                1,
                max_tokens=new_tokens,
                temperature=0.0,
                top_p=1.0,
                seed=0,
            )
            text = str(_choice_text(self.http.post("/completions", body)))
            out.append(
                Generation(
                    prompt=self.tok.decode(prompt),
                    reference=self.tok.decode(reference),
                    text=text,
                )
            )
        return out


def _choice_text(resp: Any) -> str:
    try:
        return str(resp["choices"][0].get("text") or "")
    except (KeyError, IndexError, TypeError):
        return ""


# ---------------------------------------------------------------- the enqueue probe


def probe(spec: ServedTeacherSpec, tok: Any) -> str:
    """Check the endpoint before any compute. Returns the dialect to use. Raises one line."""
    url = spec.endpoint[0]
    key = api_key(spec)
    with Pool(
        spec.endpoint,
        api_key=key,
        key_name=spec.api_key_env,
        max_concurrent=1,
        timeout_s=min(spec.timeout_s, 30.0),
        retries=2,
        retry_budget_s=10.0,
    ) as http:
        try:
            models = http.get("/models")
        except EndpointError as e:
            if "API key" in str(e):
                raise
            raise EndpointError(
                f"teacher endpoint {url} cannot be reached ({str(e).split('(last: ')[-1].rstrip(')')}; "
                "start the server, or fix teacher.endpoint (it ends in /v1)"
            ) from None
        names = [str(m.get("id")) for m in models.get("data", []) if isinstance(m, dict)]
        if spec.model not in names:
            raise EndpointError(
                f"teacher endpoint {url} does not serve model {spec.model!r} (it serves "
                f"{names[:5]}); set teacher.model to one of those"
            )
        dialect = spec.dialect if spec.dialect != "auto" else detect_dialect(models)
        if dialect == "text":
            return dialect
        ids = list(tok(PROBE_TEXT, add_special_tokens=True)["input_ids"])
        body = dialects.score_body(
            dialect, spec.model, ids, dialects.sent_text(tok, ids), min(spec.top_k, 5)
        )
        try:
            resp = http.post("/completions", body)
            dialects.parse_scores(
                dialect,
                resp,
                ids,
                list(range(len(ids) - 1)),
                min(spec.top_k, 5),
                TokenTable(tok),
                f"{url} (probe)",
            )
        except EndpointError as e:
            raise EndpointError(f"{e} [probe of {url}, dialect {dialect}]") from None
        # Ids are sent as ids to vLLM, so its scores always line up; a different vocabulary
        # would not, and only the server's own tokenizer shows that.
        if dialect in ("llama_cpp", "vllm"):
            text = dialects.sent_text(tok, ids) if dialect == "llama_cpp" else PROBE_TEXT
            served = (
                http.post_root("/extras/tokenize", {"input": text})
                if dialect == "llama_cpp"
                else http.post_root("/tokenize", {"model": spec.model, "prompt": text})
            )
            got = [t for t in served.get("tokens", []) if t != tok.bos_token_id or ids[:1] == [t]]
            if got != ids:
                raise EndpointError(
                    f"teacher endpoint {url} tokenizes the probe string differently from the "
                    f"students' tokenizer ({len(got)} vs {len(ids)} tokens); serve a GGUF made "
                    "from the same tokenizer"
                )
    return dialect
