"""What a finished job hands its user: GGUF files llama.cpp runs, and a report that shows what
each student learned (baseline → final, held-out curve, generations)."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoTokenizer

from distillq.core.job.jobs import load_job
from distillq.storage import records
from distillq.storage.records import Outputs
from distillq.storage.report_records import Report
from tests.conftest import run_cli
from tests.e2e.test_pipeline import enqueue
from tests.llama_cpp_check import compare, llama_cpp, load
from tests.tiny_arch import save_tiny_arch

PROMPT = "import os\n\ndef main():\n"


def test_a_finished_job_runs_in_llama_cpp_and_reports_what_it_learned(
    settings, make_spec, workers, tmp_path
):
    llama_cpp()
    models = tmp_path / "students"
    llama_dir = save_tiny_arch(
        models / "llama", "llama", seed=3, tied=True, hidden=32, layers=1, init=0.1, half=False
    )
    qwen_dir = save_tiny_arch(
        models / "qwen2", "qwen2", seed=4, tied=True, hidden=32, layers=1, init=0.1, half=False
    )
    spec = make_spec(
        students=[
            {
                "name": "llama",
                "model": str(llama_dir),
                "peft": {"method": "lora", "r": 4},
                "batch_size": 8,
            },
            {
                "name": "qwen",
                "model": str(qwen_dir),
                "peft": {"method": "full"},
                "batch_size": 8,
                "lr": 3e-3,
            },
        ]
    )
    workers.start("teacher,student", "both")
    job_id = enqueue(settings, spec)
    res = run_cli(settings, "wait", job_id, "--stall", "180")
    assert res.returncode == 0, res.stderr + workers.log("both")
    job = load_job(settings.storage, job_id)
    report = records.read(Report, job.paths.report)
    ids = AutoTokenizer.from_pretrained(llama_dir)(PROMPT)["input_ids"]

    for track in ("llama", "qwen"):
        out = report.students[track].outputs or Outputs()
        gguf = Path(out.gguf_f16 or "")
        assert gguf == job.paths.gguf_dir(track) / f"{track}-f16.gguf"
        assert Path(out.gguf_q8_0 or "").exists() and Path(out.modelfile or "").exists()
        # llama.cpp computes what transformers computes from the merged student
        rt = compare(gguf, Path(out.merged or ""), ids)
        print(f"{track}: max |logit diff| {rt.max_logit_diff:.2e}")
        assert rt.max_logit_diff < 1e-2
        assert rt.llama_greedy == rt.hf_greedy
        load(Path(out.gguf_q8_0 or "")).eval(ids)  # the q8_0 file loads and runs

        st = report.students[track]
        assert st.baseline_loss is not None and st.eval_loss is not None
        # untrained, then one point per merged round
        assert st.heldout_curve[0][0] == 0 and len(st.heldout_curve) == 1 + job.n_shards
        assert len(st.generations) == 3 and all(g.prompt for g in st.generations)
    assert report.teacher is not None and len(report.teacher.generations) == 3
    # Every output directory has a model card the Hub's own parser reads.
    from huggingface_hub import ModelCard

    for track, kind, library in (("llama", "adapter", "peft"), ("llama", "merged", "transformers"),
                                 ("qwen", "merged", "transformers")):  # fmt: skip
        card = ModelCard.load(job.paths.final_dir(track) / kind / "README.md")
        assert card.data.library_name == library and card.data.pipeline_tag == "text-generation"
        assert "distillation" in card.data.tags and card.data.base_model
        held_out = card.data.eval_results[0].metric_value
        assert held_out == round(report.students[track].eval_loss or 0, 4)
        assert "| **" + track in card.text and "How to use it" in card.text
    # the adapter loads from any directory: its base model path is absolute
    adapter = json.loads(
        (job.paths.final_dir("llama") / "adapter" / "adapter_config.json").read_text()
    )
    assert adapter["base_model_name_or_path"] == str(llama_dir.resolve())
    assert report.eval_samples == 6
    assert any("fewer than 50" in w for w in report.warnings)
    # full fine-tuning learns on this data; LoRA on a random base barely moves, and says so
    qwen = report.students["qwen"]
    assert qwen.eval_loss is not None and qwen.baseline_loss is not None
    assert qwen.eval_loss < qwen.baseline_loss - 0.05
    assert any(w.startswith("track llama learned little") for w in report.warnings)
    assert not any(w.startswith("track qwen") for w in report.warnings)

    md = job.paths.report_md.read_text()
    assert "## What each student learned" in md and "## Held-out curve" in md
    assert (
        f"{report.students['qwen'].baseline_loss:.4f} | {report.students['qwen'].eval_loss:.4f}"
        in md
    )
    assert report.teacher.generations[0].text in md and "fewer than 50" in md

    res = run_cli(settings, "export", job_id, "--track", "qwen", "--quant", "q8_0")
    assert res.returncode == 0, res.stderr
    assert "llama-cli -m" in res.stdout and "ollama create" in res.stdout
    again = records.read(Report, job.paths.report).students["qwen"].outputs or Outputs()
    assert again.gguf_f16 is None and Path(again.gguf_q8_0 or "").exists()
    assert (
        (job.paths.gguf_dir("qwen") / "Modelfile").read_text().startswith("FROM ./qwen-q8_0.gguf")
    )
    res = run_cli(settings, "export", job_id, "--quant", "q4_k")
    assert res.returncode == 1 and "q4_k" in res.stderr and "f16, q8_0" in res.stderr
