"""Model cards for a track's outputs: ``final/merged/README.md`` and ``final/adapter/README.md``.

The Hugging Face convention, so the Hub, ``huggingface_hub`` and people can tell what a
directory holds: YAML metadata written by ``huggingface_hub``'s own ``ModelCardData``
(``base_model``, ``library_name``, ``tags``, ``datasets``, ``pipeline_tag`` and the held-out
loss as a ``model-index`` result), then how the model was made, how it compares with the
teacher and the CE-only twin, and how to load and run it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distillq.storage.atomic import write_bytes
from distillq.storage.records import Outputs
from distillq.storage.report_records import Report, StudentSummary

TAGS = ["distillation", "knowledge-distillation", "distillq"]


def _metadata(base: str, library: str, dataset: str, track: str, st: StudentSummary) -> str:
    from huggingface_hub import EvalResult, ModelCardData

    results = (
        [
            EvalResult(
                task_type="text-generation",
                dataset_type="held-out",
                dataset_name=f"{dataset} (held-out slice)",
                metric_type="loss",
                metric_name="held-out cross-entropy (nats/token)",
                metric_value=round(st.eval_loss, 4),
            )
        ]
        if st.eval_loss is not None and st.eval_loss == st.eval_loss
        else None
    )
    data = ModelCardData(
        base_model=base,
        library_name=library,
        tags=TAGS,
        datasets=[dataset],
        pipeline_tag="text-generation",
        model_name=track,
        eval_results=results,
    )
    return str(data.to_yaml())


def _loss(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{x:.4f}"


def render(spec: Any, data: Report, track: str, kind: str) -> str:
    """The card of ``track``'s ``kind`` output ("merged" or "adapter"); ``spec``: the JobSpec."""
    st = data.students[track]
    s = spec.student(track)
    loss = spec.loss_for(s)
    teacher = spec.teacher.model if spec.teacher is not None else "none (data_parallel)"
    dataset = Path(spec.dataset).stem
    library = "peft" if kind == "adapter" else "transformers"
    method = data.cache.method
    targets = (
        f"sampled targets, {data.cache.k} draws per position"
        if method == "sampled"
        else f"top-{data.cache.k} targets"
    )
    rows = []
    if data.teacher is not None:
        rows.append(f"| teacher ({teacher}) | {_loss(data.teacher.eval_loss)} |")
    rows.append(f"| **{track}** (this model) | **{_loss(st.eval_loss)}** |")
    if data.ce_track and data.ce_track != track:
        rows.append(
            f"| {data.ce_track} (same student, CE only) | "
            f"{_loss(data.students[data.ce_track].eval_loss)} |"
        )
    rows.append(f"| {track} untrained | {_loss(st.baseline_loss)} |")
    closed = data.ce_gap_closed.get(track)
    gap = (
        f"\nIt closes {closed:.0%} of the held-out gap between the CE-only twin and the teacher.\n"
        if closed is not None
        else ""
    )
    here = "."  # the card sits in the directory it describes
    use = (
        [
            "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            f'model = AutoModelForCausalLM.from_pretrained("{here}")',
            f'tok = AutoTokenizer.from_pretrained("{here}")',
            "```",
        ]
        if kind == "merged"
        else [
            "```python",
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM",
            f'base = AutoModelForCausalLM.from_pretrained("{s.model}")',
            f'model = PeftModel.from_pretrained(base, "{here}")',
            "```",
        ]
    )
    gguf = (st.outputs.gguf_q8_0 or st.outputs.gguf_f16) if st.outputs else None
    if gguf:
        use += [
            "",
            "llama.cpp and Ollama (the GGUF files distillq wrote beside this directory):",
            "",
            "```bash",
            f"llama-cli -m ../gguf/{Path(gguf).name} -p 'Hello' -n 64",
            "ollama create distilled -f ../gguf/Modelfile && ollama run distilled",
            "```",
        ]
    body = [
        f"# {track}",
        "",
        f"A student distilled by distillq from **{teacher}** "
        f"(job `{data.job_id}`, mode `{data.mode}`).",
        "",
        "## How it was made",
        "",
        f"- student: `{s.model}`, trained with `{s.method}`"
        + (" (all weights)" if s.method == "full" else " adapters"),
        f"- teacher targets: {targets} from a sparse teacher cache ({data.records} records, "
        f"{data.shards} shards)",
        f"- loss: α·CE + (1 − α)·{loss.kind}, α = {loss.alpha}, τ = "
        f"{loss.temperature if loss.temperature is not None else 'the cache τ'}",
        f"- {st.steps} optimizer steps, {st.tokens:,} tokens",
        "",
        "## Held-out results",
        "",
        f"Cross-entropy in nats per token on {data.eval_samples} held-out samples of `{dataset}`:",
        "",
        "| model | held-out CE |",
        "|---|---|",
        *rows,
        gap,
        "## How to use it",
        "",
        *use,
        "",
    ]
    return f"---\n{_metadata(s.model, library, dataset, track, st)}\n---\n\n" + "\n".join(body)


def write_cards(spec: Any, data: Report) -> None:
    """A card in each output directory of every track (merged/, adapter/)."""
    for track, st in data.students.items():
        out = st.outputs or Outputs()
        for kind, where in (("merged", out.merged), ("adapter", out.adapter)):
            if where and Path(where).is_dir():
                card = render(spec, data, track, kind)
                write_bytes(Path(where) / "README.md", card.encode())
