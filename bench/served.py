"""Served teachers: the teacher stage against real llama-cpp-python servers.

    python -m bench.run --only served

The stage function (``core.teacher.write_shard`` with an ``EndpointTeacher``) scores the same
records at ``max_concurrent`` 1, 2 and 8, against one server process and against two (one
thread each on this machine), with and without a proxy that adds 200 ms to every request (a
hosted API's round trip), beside the local transformers teacher on the same model. The
servers run one request at a time (measured), so what concurrency buys is hidden latency and
used replicas, not parallelism inside a server.

Generation: the local teacher's generation stage (``core.generation.generate_batch``) against
a bare ``model.generate`` loop at the same batch size, prompts and lengths.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import common
from distillq.core.job.data import Prompt, TokenizeStats, encode_prompt, tokenize_record
from distillq.core.job.models import load_causal_lm, load_tokenizer
from distillq.core.job.spec import GenerateSpec, ServedTeacherSpec
from distillq.core.targets.topk import TopK
from distillq.core.teacher.endpoint import Pool
from distillq.core.teacher.local import LocalTeacher, write_shard
from distillq.core.teacher.served import EndpointTeacher
from distillq.storage.cache import ShardMeta
from tests.llama_server import SERVED_NAME, FaultProxy, LlamaServer, serve_gguf

DELAY_S = 0.2
CONCURRENCY = (1, 2, 8)


def _meta(vocab: int, k: int, source: str) -> ShardMeta:
    return ShardMeta(0, vocab, k, 1.0, "bench", "bench", (0, 1), source=source)


def _stage(teacher: Any, tok: Any, data: Path, n: int, out: Path, k: int) -> float:
    """tokens/s of the teacher stage function over the first ``n`` records of ``data``."""
    index = _index(data)
    started = time.perf_counter()
    counts, _, _ = write_shard(
        teacher=teacher,
        tok=tok,
        dataset=data,
        index=index,
        record_ids=np.arange(n),
        out=out,
        meta=_meta(len(tok), k, "bench"),
        max_length=256,
    )
    seconds = time.perf_counter() - started
    out.unlink()
    return counts["tokens"] / seconds


def _index(data: Path) -> np.ndarray:
    from distillq.core.job.data import index_dataset

    return index_dataset(data).rows


def measure(root: Path, records: int = 24, k: int = 20) -> dict[str, Any]:
    paths = common.models(root)
    tok = load_tokenizer(paths["teacher"])
    data = common.dataset(root, max(records, 40))
    gguf = serve_gguf(paths["teacher"], root / "served" / "teacher-f32.gguf")
    out = root / "served" / "shard.h5"
    results: dict[str, Any] = {"records": records, "k": k, "delay_s": DELAY_S, "runs": {}}
    torch.set_num_threads(1)  # the servers get one thread each: the local teacher too
    results["generation"] = generation(paths["teacher"], data, records)

    model = load_causal_lm(paths["teacher"], "teacher")
    local = LocalTeacher(
        model, tok, temperature=1.0, batch_size=8, max_length=256, generate=None, method=TopK(k)
    )
    results["local_tokens_per_s"] = round(_stage(local, tok, data, records, out, k), 1)

    log = root / "served" / "servers.log"
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(LlamaServer(gguf, log, n_ctx=512)) for _ in range(2)]
        for n_servers in (1, 2):
            for delay in (0.0, DELAY_S):
                proxies = [
                    stack.enter_context(FaultProxy(s.url, delay_s=delay))
                    for s in servers[:n_servers]
                ]
                for c in CONCURRENCY:
                    spec = ServedTeacherSpec(
                        model=SERVED_NAME,
                        endpoint=tuple(p.url for p in proxies),
                        top_k=k,
                        max_concurrent=c,
                        max_length=256,
                    )
                    with Pool(spec.endpoint, max_concurrent=c) as http:
                        teacher = EndpointTeacher(spec, tok, http, "llama_cpp", max_length=256)
                        rate = _stage(teacher, tok, data, records, out, k)
                    key = f"servers={n_servers} delay={delay} concurrent={c}"
                    results["runs"][key] = round(rate, 1)
                    print(f"         {key}: {rate:.1f} tokens/s", flush=True)
    r = results["runs"]
    results["latency_hidden"] = {
        f"concurrent={c}": round(r[f"servers=1 delay={DELAY_S} concurrent={c}"] / r[f"servers=1 delay=0.0 concurrent={c}"], 3)
        for c in CONCURRENCY
    }  # fmt: skip
    results["replicas_used"] = {
        f"concurrent={c}": round(r[f"servers=2 delay=0.0 concurrent={c}"] / r[f"servers=1 delay=0.0 concurrent={c}"], 3)
        for c in CONCURRENCY
    }  # fmt: skip
    return results


@torch.no_grad()
def generation(teacher: str, data: Path, records: int, batch: int = 8) -> dict[str, Any]:
    """The local generation stage vs a bare ``model.generate`` loop, same batches, greedy, so
    both produce the same tokens."""
    model = load_causal_lm(teacher, "teacher").eval()
    tok = load_tokenizer(teacher)
    prompts = []
    for i, line in enumerate(data.read_text().splitlines()[:records]):
        s = tokenize_record(json.loads(line), i, tok, 256, TokenizeStats())
        if s is not None:
            text = tok.decode(s.input_ids[:32])
            prompts.append(Prompt(i, encode_prompt({"prompt": text}, tok)))
    gen = GenerateSpec(max_new_tokens=64, temperature=0.0)
    stage = LocalTeacher(
        model, tok, temperature=1.0, batch_size=batch, max_length=256, generate=gen, method=TopK(20)
    )

    def run_stage() -> int:
        return sum(len(t.targets.ids) for ts in stage.run(prompts) for t in ts if t.targets)

    def run_bare() -> None:
        for i in range(0, len(prompts), batch):
            rows = prompts[i : i + batch]
            width = max(len(p.input_ids) for p in rows)
            ids = torch.zeros((len(rows), width), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for j, p in enumerate(rows):
                ids[j, width - len(p.input_ids) :] = torch.tensor(p.input_ids)
                mask[j, width - len(p.input_ids) :] = 1
            model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=64, do_sample=False,
                pad_token_id=0,
            )  # fmt: skip

    # A warm-up of each, then five alternating timings of each; medians.
    made = run_stage()
    run_bare()
    times: dict[str, list[float]] = {"stage_s": [], "bare_s": []}
    for _ in range(5):
        t = time.perf_counter()
        run_stage()
        times["stage_s"].append(time.perf_counter() - t)
        t = time.perf_counter()
        run_bare()
        times["bare_s"].append(time.perf_counter() - t)
    out = {k: float(np.median(v)) for k, v in times.items()}
    return {
        "batch": batch,
        "prompts": len(prompts),
        "generated_tokens": made,
        "stage_s": round(out["stage_s"], 2),
        "bare_s": round(out["bare_s"], 2),
        "ratio": round(out["bare_s"] / out["stage_s"], 3),
    }
