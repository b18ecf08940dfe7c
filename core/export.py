"""Write a track's final outputs in formats that load without distillq.

    final/adapter/   PEFT format: PeftModel.from_pretrained(base, "final/adapter")
    final/merged/    HF safetensors: AutoModelForCausalLM.from_pretrained("final/merged")

Methods whose tuner cannot fold into the base weights (prefix, prompt, p-tuning,
adaption_prompt) get no merged/; ``full`` fine-tuning has no adapter, only merged/.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from core import peft_methods
from core.models import load_tokenizer
from storage.atomic import atomic_dir


def _publish(final: Path, save: Any) -> Path:
    if final.exists():
        shutil.rmtree(final)
    with atomic_dir(final) as tmp:
        save(tmp)
    return final


def export_track(model: Any, spec: Any, out: Path) -> dict[str, str | None]:
    """Save adapter and/or merged model of a trained student under ``out``. Returns their paths."""
    tok = load_tokenizer(spec.model)
    full = peft_methods.resolve(spec.method) == peft_methods.FULL
    result: dict[str, str | None] = {"adapter": None, "merged": None}
    if not full:
        result["adapter"] = str(_publish(out / "adapter", lambda d: model.save_pretrained(d)))
    if full:
        merged = model
    elif not callable(getattr(model.base_model, "merge_and_unload", None)):
        return result  # virtual tokens / adapter prompts live outside the base weights
    else:
        # merge_and_unload folds the adapter into the base weights in place: do it last.
        merged = model.merge_and_unload()

    def save_merged(d: Path) -> None:
        merged.save_pretrained(d, safe_serialization=True)
        tok.save_pretrained(d)

    result["merged"] = str(_publish(out / "merged", save_merged))
    return result
