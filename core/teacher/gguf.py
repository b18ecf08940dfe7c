"""A GGUF teacher run by llama.cpp in this process (llama-cpp-python's low-level API).

No server, no HTTP, no Python sort of the vocabulary: the samples of a batch are decoded
together (one sequence id each, one shared KV cache), a piece of at most ``chunk`` tokens per
``llama_decode``, asking for logits only at target positions; each piece's [rows, V] logits go
through the same log-softmax and target method as a transformers teacher's (``core/targets``),
so memory stays O(chunk × V) and the cache is the one the local teacher would write.

Generation (``teacher.generate``) samples in torch from the same full logits, seeded per
(record, copy), and stores the raw distribution at each generated position, as
``core/teacher/generation.py`` does.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

from distillq.core.job.data import Prompt, Sample
from distillq.core.job.gguf_models import GgufInfo
from distillq.core.job.spec import GenerateSpec
from distillq.core.maths.batching import PaddingCount
from distillq.core.targets.method import TargetMethod, concat
from distillq.core.targets.records import SparseTargets, draw_seed
from distillq.core.targets.topk import with_token_column
from distillq.core.teacher.local import CACHE_ROWS, Item, chunk_positions, split_targets
from distillq.core.teacher.records import Target, generated_sample
from distillq.errors import ModelError
from distillq.storage.records import EvalResult, Generation

log = logging.getLogger(__name__)


def _llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError:
        raise ModelError(
            "a GGUF teacher runs in llama.cpp: install it on teacher nodes with "
            "`pip install 'distillq[llama]'` (or `make llama-cpp`)"
        ) from None
    global _quiet
    if _quiet is None:
        # llama.cpp logs every tensor it loads to stderr: a worker's log keeps its errors only.
        @llama_cpp.llama_log_callback
        def _errors_only(level: int, text: bytes, _: Any) -> None:
            if level == LOG_ERROR and text:
                log.error("llama.cpp: %s", text.decode(errors="replace").rstrip())

        _quiet = _errors_only  # referenced, or ctypes frees it under llama.cpp's feet
        llama_cpp.llama_log_set(_quiet, ctypes.c_void_p(0))
    return llama_cpp


_quiet: Any = None
LOG_ERROR = 4
"""ggml's log level of errors (GGML_LOG_LEVEL_ERROR)."""


class GgufRunner:
    """One GGUF loaded by llama.cpp: decodes packs of sequences, hands back logits rows."""

    def __init__(self, info: GgufInfo, *, n_ctx: int, n_seq: int, chunk: int, threads: int) -> None:
        ll = self.ll = _llama_cpp()
        ll.llama_backend_init()
        mp = ll.llama_model_default_params()
        mp.n_gpu_layers = 0
        self.model = ll.llama_model_load_from_file(str(info.path).encode(), mp)
        if not self.model:
            raise ModelError(f"llama.cpp could not load the GGUF teacher {info.path}")
        cp = ll.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = cp.n_ubatch = chunk
        cp.n_seq_max = n_seq
        cp.kv_unified = True  # the pack's sequences share the cache: n_ctx cells in all
        cp.n_threads = cp.n_threads_batch = threads
        cp.no_perf = True
        self.ctx = ll.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise ModelError(f"llama.cpp could not make a context for {info.path} (n_ctx {n_ctx})")
        self.vocab = ll.llama_vocab_n_tokens(ll.llama_model_get_vocab(self.model))
        self.n_ctx, self.n_seq, self.chunk = n_ctx, n_seq, chunk
        self.batch = ll.llama_batch_init(chunk, 0, 1)

    def close(self) -> None:
        if getattr(self, "ctx", None) and self.ll.llama_free is not None:
            self.ll.llama_batch_free(self.batch)
            self.ll.llama_free(self.ctx)
            self.ll.llama_model_free(self.model)
            self.ctx = None

    def __del__(self) -> None:
        self.close()

    def clear(self) -> None:
        self.ll.llama_memory_clear(self.ll.llama_get_memory(self.ctx), True)

    def decode(self, tokens: list[tuple[int, int, int, bool]]) -> torch.Tensor:
        """Decode (token, position, sequence, wants logits) entries, at most ``chunk``; the
        float32 logits [wanted, V] of the wanted ones, in order (a copy)."""
        b = self.batch
        b.n_tokens = len(tokens)
        wanted = 0
        for i, (tok, pos, seq, want) in enumerate(tokens):
            b.token[i], b.pos[i], b.n_seq_id[i] = tok, pos, 1
            b.seq_id[i][0] = seq
            b.logits[i] = want
            wanted += want
        rc = self.ll.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with {rc} ({len(tokens)} tokens)")
        if not wanted:
            return torch.empty(0, self.vocab)
        ptr = self.ll.llama_get_logits(self.ctx)
        flat = np.ctypeslib.as_array(
            ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(wanted * self.vocab,)
        )
        return torch.from_numpy(flat.reshape(wanted, self.vocab).copy())


def _masked(logits: torch.Tensor, limit: int, temperature: float) -> torch.Tensor:
    """Logits at τ, with the rows past the tokenizer's (a padded vocabulary) never a target."""
    if limit < logits.shape[-1]:
        logits[:, limit:] = float("-inf")
    return logits / temperature if temperature != 1.0 else logits


class GgufTeacher:
    """The ``Teacher`` protocol (``core/teacher/local.py``) over a :class:`GgufRunner`."""

    def __init__(
        self,
        info: GgufInfo,
        tok: Any,
        *,
        temperature: float,
        batch_size: int,
        max_length: int,
        generate: GenerateSpec | None,
        method: TargetMethod,
        threads: int,
    ) -> None:
        self.info, self.tok = info, tok
        self.source = f"gguf {info.quantization}"
        self.temperature, self.batch_size, self.max_length = temperature, batch_size, max_length
        self.gen, self.method = generate, method
        self.token_column = False
        """Scoring a student's own samples: each position's token gets a column too."""
        self.limit = len(tok)
        chunk = min(
            CACHE_ROWS, chunk_positions(max(len(info.tokens), 1), copies=method.head_copies)
        )
        self.runner = GgufRunner(
            info,
            n_ctx=max_length * batch_size,
            n_seq=batch_size,
            chunk=max(chunk, 1),
            threads=threads,
        )

    def run(
        self, items: Iterable[Item], padding: PaddingCount | None = None
    ) -> Iterator[list[Target]]:
        pending: list[Item] = []
        for item in items:
            if pending and type(pending[0]) is not type(item):
                yield from self._flush(pending)
                pending = []
            pending.append(item)
            if len(pending) == self.batch_size:
                yield from self._flush(pending)
                pending = []
        yield from self._flush(pending)

    def _flush(self, pending: list[Item]) -> Iterator[list[Target]]:
        samples = [x for x in pending if isinstance(x, Sample)]
        prompts = [x for x in pending if isinstance(x, Prompt)]
        yield from self._score(samples)
        if prompts:
            yield from self._generate(prompts)

    def eval_loss(self, samples: list[Sample]) -> EvalResult:
        """Token-weighted mean CE at every target position, over the full vocabulary (what
        ``core/student/evaluate.eval_loss`` gives a transformers model)."""
        total, count = 0.0, 0
        for a in range(0, len(samples), self.batch_size):
            pack = samples[a : a + self.batch_size]
            labels = [int(s.input_ids[p + 1]) for s in pack for p in s.target_positions()]
            rows = torch.cat(list(self._logits(pack))) if labels else torch.empty(0)
            if len(rows):
                logp = torch.log_softmax(_masked(rows, self.limit, 1.0), dim=-1)
                total -= float(logp[torch.arange(len(labels)), torch.tensor(labels)].sum())
                count += len(labels)
        return EvalResult(loss=total / max(count, 1), tokens=count, samples=len(samples))

    def _logits(self, samples: list[Sample]) -> Iterator[torch.Tensor]:
        """Raw logits at the target positions of ``samples`` (one pack), a piece at a time,
        sample by sample and position by position."""
        want = [set(map(int, s.target_positions())) for s in samples]
        flat = [
            (tok, pos, seq, pos in want[seq])
            for seq, s in enumerate(samples)
            for pos, tok in enumerate(s.input_ids)
        ]
        self.runner.clear()
        step = self.runner.chunk
        for a in range(0, len(flat), step):
            logits = self.runner.decode(flat[a : a + step])
            if len(logits):
                yield logits

    def _score(self, samples: list[Sample]) -> Iterator[list[Target]]:
        """One pack: every sample a sequence of the shared cache; nothing is padded."""
        if not samples:
            return
        positions = [s.target_positions() for s in samples]
        u = self.method.uniforms(
            [(s.record_id, len(p), 0) for s, p in zip(samples, positions, strict=True)]
        )
        tokens = torch.tensor(
            [int(s.input_ids[p + 1]) for s, ps in zip(samples, positions, strict=True) for p in ps],
            dtype=torch.long,
        )
        parts: list[SparseTargets] = []
        done = 0
        for logits in self._logits(samples):
            n = len(logits)
            logp = torch.log_softmax(_masked(logits, self.limit, self.temperature), dim=-1)
            part = self.method.select(logp, None if u is None else u[done : done + n])
            if self.token_column:
                part = with_token_column(part, logp, tokens[done : done + n])
            parts.append(part)
            done += n
        if not parts:  # no target position in the pack: keep the shapes
            empty = torch.zeros(0, self.runner.vocab)
            part = self.method.select(empty, u)
            if self.token_column:
                part = with_token_column(part, empty, tokens)
            parts.append(part)
        # Outputs come sample by sample, position by position: the order of target_positions.
        for s, t in zip(samples, split_targets(concat(parts), positions), strict=True):
            yield [Target(s, t)]

    def _generate(self, prompts: list[Prompt]) -> Iterator[list[Target]]:
        """``gen.n`` responses per prompt, the rows decoded together (one sequence each, one
        token per row per step), each row sampled from its own generator."""
        gen = self.gen
        assert gen is not None
        made = self._generate_rows([(p, c) for p in prompts for c in range(gen.n)], gen)
        for p in prompts:
            yield [made[(id(p), c)] for c in range(gen.n)]

    def _generate_rows(
        self, rows: list[tuple[Prompt, int]], gen: GenerateSpec
    ) -> dict[tuple[int, int], Target]:
        """(prompt, copy) rows, ``batch_size`` at a time; keyed by (id(prompt), copy)."""
        made: dict[tuple[int, int], Target] = {}
        for a in range(0, len(rows), self.batch_size):
            made.update(self._generate_pack(rows[a : a + self.batch_size], gen))
        return made

    def _generate_pack(
        self, rows: list[tuple[Prompt, int]], gen: GenerateSpec
    ) -> dict[tuple[int, int], Target]:
        eos = self.tok.eos_token_id
        step = self.runner.chunk
        self.runner.clear()
        prefill = [
            (t, i, seq, i == len(p.input_ids) - 1)
            for seq, (p, _) in enumerate(rows)
            for i, t in enumerate(p.input_ids)
        ]
        last = torch.cat(
            [self.runner.decode(prefill[a : a + step]) for a in range(0, len(prefill), step)]
        )
        cur = dict(enumerate(last))
        gens = [torch.Generator().manual_seed(draw_seed(gen.seed, p.record_id, c)) for p, c in rows]
        budget = [
            max(min(gen.max_new_tokens, self.max_length - len(p.input_ids)), 1) for p, _ in rows
        ]
        new: list[list[int]] = [[] for _ in rows]
        raws: list[list[torch.Tensor]] = [[] for _ in rows]
        active = list(range(len(rows)))
        while active:
            entries, still = [], []
            for seq in active:
                raw = _masked(cur[seq][None], self.limit, 1.0)[0]
                raws[seq].append(raw)
                new[seq].append(_sample(raw, gen=gen, g=gens[seq]))
                if new[seq][-1] != eos and len(new[seq]) < budget[seq]:
                    at = len(rows[seq][0].input_ids) + len(new[seq]) - 1
                    entries.append((new[seq][-1], at, seq, True))
                    still.append(seq)
            if still:
                out = torch.cat(
                    [
                        self.runner.decode(entries[a : a + step])
                        for a in range(0, len(entries), step)
                    ]
                )
                cur = dict(zip(still, out, strict=True))
            active = still
        made = {}
        for seq, (p, c) in enumerate(rows):
            toks = new[seq]
            stopped = toks[-1] == eos
            u = self.method.uniforms([(p.record_id, len(toks), c)])
            logp = torch.log_softmax(torch.stack(raws[seq]) / self.temperature, dim=-1)
            text = str(self.tok.decode(toks[:-1] if stopped else toks, skip_special_tokens=True))
            made[(id(p), c)] = Target(
                generated_sample(p, toks, False, eos),
                self.method.select(logp, u),
                "generated",
                text,
            )
        return made

    def continuations(
        self, prompts: list[tuple[list[int], list[int]]], new_tokens: int
    ) -> list[Generation]:
        """Greedy continuations of (prompt, reference) ids, for the report: the same batched
        decoding as responses, at temperature 0."""
        rows = [(Prompt(i, list(prompt)), 0) for i, (prompt, _) in enumerate(prompts)]
        made = self._generate_rows(rows, GenerateSpec(max_new_tokens=new_tokens, temperature=0.0))
        return [
            Generation(
                prompt=self.tok.decode(prompt),
                reference=self.tok.decode(reference),
                text=made[(id(row), 0)].text,
            )
            for (row, _), (prompt, reference) in zip(rows, prompts, strict=True)
        ]


def _sample(logits: torch.Tensor, *, gen: GenerateSpec, g: torch.Generator) -> int:
    """The next token as ``model.generate`` would pick it: greedy at temperature 0, else
    softmax at the temperature, nucleus-filtered at top_p."""
    if gen.temperature == 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / gen.temperature, dim=-1)
    if gen.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_p, 0) - sorted_p < gen.top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs, 1, generator=g))
