"""A student started from the teacher's layers against a random one of the same shape.

    python -m bench.run --only init_student

Both come from ``core.init_student`` on the demo teacher (6 layers, d = 256): 3 layers at the
teacher's width, one from every other teacher layer, one random. Each trains with plain
next-token CE on the same demo batches, in the same order, with the same optimizer and
steps; held-out CE is measured before and after on the same held-out records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bench import common
from distillq.core.job.models import load_causal_lm, load_tokenizer
from distillq.core.student.init_student import init_student


def _heldout(model: Any, batches: list[tuple[torch.Tensor, ...]]) -> float:
    total, n = 0.0, 0
    with torch.no_grad():
        for ids, mask, rows, cols, labels in batches:
            logits = model(input_ids=ids, attention_mask=mask).logits[rows, cols]
            total += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            n += len(labels)
    return total / n


def measure(root: Path, records: int = 240, steps: int = 120, batch: int = 8) -> dict[str, Any]:
    teacher = str(common.models(root)["teacher"])
    tok = load_tokenizer(teacher)
    samples = common.samples(common.dataset(root, records), tok)
    held, train = samples[::10], [s for i, s in enumerate(samples) if i % 10]
    held_batches = list(common.batches(held, 16))
    train_batches = list(common.batches(train, batch))
    out: dict[str, Any] = {"records": records, "steps": steps, "batch": batch, "arms": {}}
    for arm, from_teacher in (("from_teacher_layers", True), ("random", False)):
        path, shape = init_student(
            teacher, root / f"init-{arm}", layers=3, hidden=None, from_teacher=from_teacher
        )
        model = load_causal_lm(str(path)).train()
        before = _heldout(model, held_batches)
        torch.manual_seed(0)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for step in range(steps):
            ids, mask, rows, cols, labels = train_batches[step % len(train_batches)]
            logits = model(input_ids=ids, attention_mask=mask).logits[rows, cols]
            torch.nn.functional.cross_entropy(logits, labels).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        out["arms"][arm] = {
            "heldout_before": round(before, 4),
            "heldout_after": round(_heldout(model, held_batches), 4),
        }
        out["shape"] = f"{shape.layers} layers, d = {shape.hidden}"
    out["teacher_heldout"] = round(_heldout(load_causal_lm(teacher), held_batches), 4)
    return out
