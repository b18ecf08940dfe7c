"""Every PEFT family trains on a real teacher cache, merges, and exports loadable outputs."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from distillq.core.job.spec import PeftSpec
from distillq.core.student import merge
from distillq.core.student import train as student
from distillq.core.student.peft_methods import make_config, valid_methods
from distillq.errors import SpecError
from distillq.storage import checkpoints
from tests.conftest import job_with_cache

METHODS = [
    {"method": "lora", "r": 4, "alpha": 8},
    {"method": "prefix", "num_virtual_tokens": 4},
    {"method": "prompt", "num_virtual_tokens": 4},
    {"method": "ia3"},
    {"method": "adaption_prompt", "adapter_len": 4, "adapter_layers": 1},
    {"method": "loha", "r": 4, "target_modules": ["q_proj", "v_proj"]},
    {"method": "full"},
]

LOAD_WITHOUT_DISTILLQ = """
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from peft import PeftModel
base, out = sys.argv[1], json.loads(sys.argv[2])
ids = torch.tensor([[5, 6, 7, 8]])
res = {}
if out["adapter"]:
    m = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out["adapter"])
    res["adapter_logits"] = m(input_ids=ids).logits[0, -1, :5].tolist()
if out["merged"]:
    m = AutoModelForCausalLM.from_pretrained(out["merged"])
    AutoTokenizer.from_pretrained(out["merged"])
    res["merged_logits"] = m(input_ids=ids).logits[0, -1, :5].tolist()
print(json.dumps(res))
"""


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_models, text_records):
    students = [
        {"name": f"m{i}", "model": tiny_models["student"], "peft": p, "batch_size": 8, "lr": 1e-2}
        for i, p in enumerate(METHODS)
    ]
    spec = {
        "name": "peft",
        "shards": 1,
        "eval_fraction": 0.1,
        "students": students,
        "teacher": {"model": tiny_models["teacher"], "top_k": 8, "max_length": 64},
    }
    return job_with_cache(tmp_path_factory.mktemp("peft"), text_records[:40], spec)


@pytest.mark.parametrize("i", range(len(METHODS)), ids=[m["method"] for m in METHODS])
def test_method_trains_merges_and_exports(job, tiny_models, i):
    track = f"m{i}"
    stats = student.train_replica(job, track, 0, 0)
    assert stats.steps > 0 and stats.tokens > 0
    delta, _ = checkpoints.load_replica(job.paths, track, 0, 0)
    assert any(d.abs().sum() > 0 for d in delta.values()), "training changed nothing"
    assert merge.merge_round(job, track, 0) == merge.MergeResult(merged=True, version=1)
    assert merge.merge_round(job, track, 0) == merge.MergeResult(merged=False, version=1)

    model = student.build(job.spec.student(track))
    student.load_params(model, checkpoints.latest(job.paths, track).params())
    from distillq.core.export.outputs import export_track

    out = export_track(model, job.spec.student(track), job.paths.final_dir(track))
    method = METHODS[i]["method"]
    assert (out.adapter is None) == (method == "full")
    assert (out.merged is None) == (method in ("prefix", "prompt", "adaption_prompt"))
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            LOAD_WITHOUT_DISTILLQ,
            tiny_models["student"],
            json.dumps(dataclasses.asdict(out)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    logits = json.loads(res.stdout.strip().splitlines()[-1])
    if out.adapter and out.merged:
        # The merged model computes what base + adapter computes.
        assert logits["adapter_logits"] == pytest.approx(logits["merged_logits"], abs=1e-4)


def test_unknown_method_lists_valid_ones():
    with pytest.raises(SpecError, match=r"valid: .*lora.*prefix"):
        make_config(PeftSpec(method="lorra"))
    assert {"lora", "prefix", "prompt", "ia3", "adaption_prompt", "full", "loha", "vera"} <= set(
        valid_methods()
    )


def test_unknown_option_lists_the_method_options():
    with pytest.raises(SpecError, match="not an option of LORA"):
        make_config(PeftSpec(method="lora", rank=4))


def test_a_checked_option_set_is_remembered_so_enqueue_skips_importing_peft(tmp_path):
    import subprocess
    import sys

    from distillq.core.student.peft_methods import check, remember

    memo = tmp_path / "peft-checked.json"
    with pytest.raises(SpecError, match="not an option of LORA"):
        check(PeftSpec(method="lora", rank=4), memo)
    digest = check(PeftSpec(method="lora", r=4), memo)
    assert digest is not None and not memo.exists()  # written once the job exists
    remember(memo, [digest])
    assert check(PeftSpec(method="lora", r=4), memo) is None
    probe = (
        "import sys; from distillq.core.student.peft_methods import check; "
        "from distillq.core.job.spec import PeftSpec; "
        f"check(PeftSpec(method='lora', r=4), __import__('pathlib').Path({str(memo)!r})); "
        "print('peft' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    # Another option set is built (and checked) again.
    probe = probe.replace("r=4", "r=8")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
