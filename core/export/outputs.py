"""Write a track's final outputs in formats that load without distillq.

    final/adapter/   PEFT format: PeftModel.from_pretrained(base, "final/adapter")
    final/merged/    HF safetensors: AutoModelForCausalLM.from_pretrained("final/merged")
    final/gguf/      <track>-f16.gguf, <track>-q8_0.gguf and an Ollama Modelfile (llama.cpp)

Methods whose tuner cannot fold into the base weights (prefix, prompt, p-tuning,
adaption_prompt) get no merged/; ``full`` fine-tuning has no adapter, only merged/.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from distillq.core.export.gguf import QUANTS, Quant, export_gguf
from distillq.core.job.models import load_tokenizer
from distillq.core.student import peft_methods
from distillq.errors import ExportError
from distillq.storage.atomic import atomic_dir
from distillq.storage.records import Outputs

log = logging.getLogger(__name__)


def _publish(final: Path, save: Any) -> Path:
    if final.exists():
        shutil.rmtree(final)
    with atomic_dir(final) as tmp:
        save(tmp)
    return final


def export_track(model: Any, spec: Any, out: Path) -> Outputs:
    """Save adapter and/or merged model of a trained student under ``out``. Returns their paths."""
    tok = load_tokenizer(spec.model)
    full = peft_methods.resolve(spec.method) == peft_methods.FULL
    adapter = None
    if not full:
        adapter = str(_publish(out / "adapter", lambda d: model.save_pretrained(d)))
    if full:
        merged = model
    elif not callable(getattr(model.base_model, "merge_and_unload", None)):
        return Outputs(adapter=adapter)  # virtual tokens / adapter prompts live outside the base
    else:
        # merge_and_unload folds the adapter into the base weights in place: do it last.
        merged = model.merge_and_unload()

    def save_merged(d: Path) -> None:
        merged.save_pretrained(d, safe_serialization=True)
        tok.save_pretrained(d)

    return Outputs(adapter=adapter, merged=str(_publish(out / "merged", save_merged)))


def export_gguf_outputs(
    merged: str | None, out: Path, stem: str, quants: tuple[Quant, ...] = QUANTS
) -> Outputs:
    """GGUF files + Modelfile of a merged model, as output entries (``gguf_<quant>``,
    ``modelfile``); where there is none, ``gguf_skipped`` says why in one line. Never raises
    ExportError: a model llama.cpp cannot take must not fail the job that trained it."""
    if merged is None:
        return Outputs(
            gguf_skipped="no merged model: this PEFT method keeps its weights outside the base model"
        )
    try:
        files = export_gguf(Path(merged), out, stem, quants)
    except ExportError as e:
        log.warning("%s: %s", stem, e)
        return Outputs(gguf_skipped=str(e))
    return Outputs(
        gguf_f16=files.files.get("f16"),
        gguf_q8_0=files.files.get("q8_0"),
        gguf_f32=files.files.get("f32"),
        modelfile=files.modelfile,
    )
