"""TRL's own GKDTrainer as the online-distillation column: teacher forward at every step.

lmbda = 0 (no on-policy student generations: supervised KD on the dataset's text, what the
distillq column does too) and beta = 0 (forward KL, distillq's default), τ = 1, the same
student init, teacher, records, batch size, learning rate and epochs; held-out loss by the
same function as every other column. GKD needs chat-formatted data: each text record
becomes one assistant turn after an empty user turn.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.efficiency import BATCH, build_student
from bench.online import split
from distillq.core.student.evaluate import eval_loss


def measure(root: Path, records: int = 320, epochs: tuple[int, ...] = (1, 2, 4)) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer  # experimental in TRL 1.x

    from bench.common import models
    from distillq.core.job.models import load_tokenizer

    torch.set_num_threads(1)
    teacher, train_set, eval_set = split(root, records)
    tok = load_tokenizer(models(root)["teacher"])
    texts = [tok.decode(s.input_ids, skip_special_tokens=True) for s in train_set]
    ds = Dataset.from_list(
        [
            {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": t}]}
            for t in texts
        ]
    )
    student = build_student(root)
    marks: dict[int, dict[str, float]] = {}
    start = [0.0, 0.0]  # wall start, time spent evaluating (excluded)

    class Marks(TrainerCallback):
        def on_epoch_end(
            self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any
        ) -> None:
            epoch = round(state.epoch)
            if epoch in epochs:
                train_s = time.perf_counter() - start[0] - start[1]
                t = time.perf_counter()
                loss = eval_loss(model, eval_set).loss
                start[1] += time.perf_counter() - t
                marks[epoch] = {"train_s": round(train_s, 1), "heldout": round(loss, 4)}
                model.train()

    with tempfile.TemporaryDirectory() as out:
        args = GKDConfig(
            output_dir=out,
            per_device_train_batch_size=BATCH,
            num_train_epochs=max(epochs),
            learning_rate=3e-3,
            lr_scheduler_type="cosine",
            warmup_steps=10,
            lmbda=0.0,
            beta=0.0,
            temperature=1.0,
            max_length=320,  # 256 tokens + the chat template's
            logging_steps=10_000,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            seed=0,
            dataloader_num_workers=0,
        )
        trainer = GKDTrainer(
            model=student,
            teacher_model=teacher,
            args=args,
            train_dataset=ds,
            processing_class=tok,
            callbacks=[Marks()],
        )
        start[0] = time.perf_counter()
        trainer.train()
    return {
        "epochs": {e: marks[e] for e in epochs if e in marks},
        "trl_version": __import__("trl").__version__,
    }
