"""A local teacher writes responses: ``model.generate`` on prompt-only records.

The stored targets are the teacher's *raw* distribution at ``teacher.temperature`` at each
generated position (``output_logits``: before temperature, top-p or any other processor), so
what the student learns is the teacher, not the sampler. Each batch draws from a seed made of
``generate.seed`` and its first record, so a retried shard writes the same text.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from distillq.core.job.data import Prompt
from distillq.core.job.spec import GenerateSpec
from distillq.core.targets.method import TargetMethod
from distillq.core.targets.records import draw_seed
from distillq.core.teacher.records import Target, generated_sample


@torch.no_grad()
def generate_batch(
    model: Any,
    tok: Any,
    prompts: list[Prompt],
    gen: GenerateSpec,
    method: TargetMethod,
    temperature: float,
    max_length: int,
) -> Iterator[list[Target]]:
    """``gen.n`` responses per prompt, as training samples with the targets ``method`` keeps
    at each generated position."""
    rows = [(p, c) for p in prompts for c in range(gen.n)]
    dev = next(model.parameters()).device
    width = max(len(p.input_ids) for p, _ in rows)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    # Left padding: every row's next token is predicted from the last column.
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (p, _) in enumerate(rows):
        ids[i, width - len(p.input_ids) :] = torch.tensor(p.input_ids)
        mask[i, width - len(p.input_ids) :] = 1
    budget = min(gen.max_new_tokens, max_length - width)
    torch.manual_seed(draw_seed(gen.seed, prompts[0].record_id, 0))
    out = model.generate(
        input_ids=ids.to(dev),
        attention_mask=mask.to(dev),
        max_new_tokens=max(budget, 1),
        do_sample=gen.temperature > 0,
        temperature=gen.temperature if gen.temperature > 0 else None,
        top_p=gen.top_p if gen.temperature > 0 else None,
        top_k=None,
        pad_token_id=pad,
        eos_token_id=tok.eos_token_id,
        output_logits=True,
        return_dict_in_generate=True,
    )
    new = out.sequences[:, width:].cpu()
    logits = torch.stack(out.logits, dim=1).float()  # [B, steps, V], raw
    logits[..., len(tok) :] = float("-inf")  # a padded head's rows are never a target
    if temperature != 1.0:
        logits = logits / temperature
    eos = tok.eos_token_id
    by_prompt: dict[int, list[Target]] = {}
    for i, (p, c) in enumerate(rows):
        toks = new[i].tolist()
        stopped = eos is not None and eos in toks
        n = toks.index(eos) + 1 if stopped else len(toks)
        sample = generated_sample(p, toks[:n], False, eos)
        u = method.uniforms([(p.record_id, n, c)])
        t = method.select(torch.log_softmax(logits[i, :n], dim=-1), u)
        text = str(tok.decode(toks[: n - 1 if stopped else n], skip_special_tokens=True))
        by_prompt.setdefault(id(p), []).append(Target(sample, t, "generated", text))
    for p in prompts:
        yield by_prompt[id(p)]
