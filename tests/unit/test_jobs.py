from pathlib import Path

import pytest

from distillq.core.job.load import apply_override, load_spec, spec_from_dict
from distillq.errors import SpecError


def base(**over):
    d = {
        "name": "j",
        "dataset": "/d.jsonl",
        "teacher": {"model": "t"},
        "students": [{"name": "s", "model": "m"}],
    }
    d.update(over)
    return d


def test_defaults_follow_the_contract():
    spec = spec_from_dict(base())
    assert spec.mode == "teacher_student" and spec.shards == 4 and spec.eval_fraction == 0.05
    assert spec.teacher.top_k == 64 and spec.loss.kind == "forward_kl" and spec.loss.alpha == 0.5
    s = spec.students[0]
    assert s.method == "lora" and s.replicas == 1
    assert spec.overlong == "truncate" and spec.max_length_key == "teacher.max_length"


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(SpecError, match="did you mean 'shards'"):
        spec_from_dict(base(shard=3))
    with pytest.raises(SpecError, match=r"did you mean 'teacher\.top_k'"):
        spec_from_dict(base(teacher={"model": "t", "topk": 8}))


@pytest.mark.parametrize(
    "over,msg",
    [
        ({"shards": 0}, "shards=0 must be positive"),
        ({"mode": "distill"}, "not one of"),
        ({"loss": {"kind": "kl"}}, "not one of"),
        ({"loss": {"alpha": 1.5}}, r"loss.alpha=1.5 must lie in \[0, 1\]"),
        ({"mode": "data_parallel"}, "remove 'teacher'"),
        ({"mode": "hybrid"}, "replicas > 1"),
        ({"students": [], "mode": "data_parallel", "teacher": None}, "students is empty"),
        ({"students": [{"name": "../x", "model": "m"}]}, "not allowed"),
        ({"name": "a/b"}, "not allowed"),
        ({"loss": {"temperature": 2.0}}, "set both to the same value"),
        ({"teacher": {"model": "t", "top_k": -1}}, "must be positive"),
        ({"shards": -2}, "shards=-2 must be positive; set it above 0"),
        ({"loss": {"kind": "forward-kl"}}, "did you mean 'forward_kl'"),
        ({"overlong": "cut"}, r"overlong='cut' is not one of \['truncate', 'refuse'\]"),
        ({"teacher": {"model": "t", "tokenizer": "tok"}}, "applies to a GGUF or endpoint teacher"),
        ({"teacher": {"model": "t.gguf", "dtype": "float32"}}, "runs at its own quantization"),
        ({"teacher": {"model": "t", "dtype": "fp16"}}, "not one of"),
        ({"students": [{"name": "s", "model": "m", "dataset_epochs": 0}]}, "must be positive"),
    ],
)
def test_bad_specs_name_the_problem(over, msg):
    with pytest.raises(SpecError, match=msg):
        spec_from_dict(base(**over))


def test_data_parallel_needs_no_teacher_and_trains_on_labels_only():
    d = base(mode="data_parallel")
    del d["teacher"]
    spec = spec_from_dict(d)
    assert spec.loss_for(spec.students[0]).alpha == 1.0


def test_overrides_reach_nested_fields_and_list_items(tmp_path):
    raw = base()
    apply_override(raw, "students.0.lr=1e-4")
    apply_override(raw, "teacher.top_k=8")
    apply_override(raw, "loss.kind=jsd")
    spec = spec_from_dict(raw)
    assert spec.students[0].lr == 1e-4 and spec.teacher.top_k == 8 and spec.loss.kind == "jsd"
    with pytest.raises(SpecError, match="key=value"):
        apply_override(raw, "oops")


def test_yaml_errors_and_relative_dataset(tmp_path):
    f = tmp_path / "job.yaml"
    f.write_text("name: j\n  bad: [\n")
    with pytest.raises(SpecError, match="not valid YAML at line 2, column 6"):
        load_spec(f)
    f.write_text(
        "name: j\ndataset: data/x.jsonl\nteacher: {model: t}\nstudents: [{name: s, model: m}]\n"
    )
    (tmp_path / "t").mkdir()
    (tmp_path / "m").mkdir()
    assert load_spec(f).dataset == str(tmp_path / "data" / "x.jsonl")
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")


def test_model_paths_resolve_against_the_spec_file_from_any_directory(
    tmp_path, monkeypatch, tiny_models
):
    import shutil

    from distillq.core.job.models import load_tokenizer
    from distillq.errors import ModelError

    project = tmp_path / "project"
    shutil.copytree(tiny_models["student"], project / "models" / "student")
    spec_file = project / "specs" / "job.yaml"
    spec_file.parent.mkdir()
    spec_file.write_text(
        "name: j\ndataset: ../data/x.jsonl\nteacher: {model: ../models/student}\n"
        "students: [{name: s, model: ../models/student}, {name: t, model: ../models/typo}]\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    # a path that is not there: the error names the absolute path that was tried
    missing = str(project / "models" / "typo")
    with pytest.raises(ModelError, match=f"student 't' model '../models/typo'.*{missing}"):
        load_spec(spec_file)
    spec_file.write_text(spec_file.read_text().replace(", {name: t, model: ../models/typo}", ""))
    spec = load_spec(spec_file)
    assert spec.teacher.model == str(project / "models" / "student")
    assert spec.students[0].model == spec.teacher.model
    load_tokenizer(spec.students[0].model)  # loads, wherever the command runs


def test_a_teacher_is_local_or_served_and_each_takes_only_its_own_keys():
    from distillq.core.job.spec import LocalTeacherSpec, PeftSpec, ServedTeacherSpec

    local = spec_from_dict(base()).teacher
    served = spec_from_dict(
        base(teacher={"model": "t", "endpoint": "http://h:8000/v1", "max_concurrent": 2})
    ).teacher
    assert isinstance(local, LocalTeacherSpec) and not local.is_endpoint
    assert isinstance(served, ServedTeacherSpec) and served.is_endpoint
    assert served.endpoint == ("http://h:8000/v1",) and served.max_concurrent == 2
    for key, value in (("max_concurrent", 2), ("dialect", "vllm"), ("api_key_env", "K")):
        with pytest.raises(
            SpecError,
            match=rf"teacher\.{key}={value} applies to an endpoint teacher: add "
            rf"teacher\.endpoint, or remove teacher\.{key}",
        ):
            spec_from_dict(base(teacher={"model": "t", key: value}))
    with pytest.raises(SpecError, match=r"teacher\.temperature=2\.0 with an endpoint"):
        spec_from_dict(base(teacher={"model": "t", "endpoint": ["http://h/v1"], "temperature": 2}))
    # peft options are a typed record: the method, and the rest as that method's options
    peft = spec_from_dict(
        base(students=[{"name": "s", "model": "m", "peft": {"method": "LoRA", "r": 4}}])
    )
    assert peft.students[0].peft == PeftSpec(method="LoRA", r=4)
    assert peft.students[0].method == "lora" and peft.students[0].peft.options == {"r": 4}


def test_wrong_types_and_shapes_get_one_line_naming_the_key():
    cases = [
        (base(shards="many"), "shards='many' should be a int"),
        (
            base(students=[{"name": "s", "model": "m", "lr": "fast"}]),
            r"students\[0\]\.lr='fast' should be a float",
        ),
        (base(students="s"), "students must be a list"),
        (base(teacher=["t"]), "teacher must be a mapping, got list"),
        (
            {"dataset": "/d", "students": [{"name": "s", "model": "m"}]},
            "job spec is missing 'name'",
        ),
        (
            base(teacher={"model": "t", "endpoint": ["http://h/v1"], "dialect": "vlm"}),
            r"teacher\.dialect='vlm' is not one of .*did you mean 'vllm'",
        ),
    ]
    for raw, msg in cases:
        with pytest.raises(SpecError, match=msg):
            spec_from_dict(raw)
    # YAML 1.1 reads `1e-4` as a string; the spec reads it as the float it means.
    s = spec_from_dict(base(students=[{"name": "s", "model": "m", "lr": "1e-4"}]))
    assert s.students[0].lr == 1e-4


def test_a_job_frozen_before_teachers_were_a_union_still_loads():
    """job.yaml of an earlier version kept every served key, at its default, on a local
    teacher; a job resumed after the upgrade must load as it was."""
    from distillq.core.job.load import spec_from_stored

    old = base(
        teacher={
            "model": "t",
            "endpoint": [],
            "api_key_env": None,
            "max_concurrent": 8,
            "timeout_s": 120.0,
            "retries": 8,
            "retry_budget_s": 300.0,
            "dialect": "auto",
            "tokenizer": None,
        }
    )
    spec = spec_from_stored(old)
    assert spec.teacher is not None and spec.teacher.model == "t" and not spec.teacher.is_endpoint
    assert spec_from_dict(spec.to_dict()) == spec


def test_a_cache_only_spec_and_the_teacher_dtype_resolved_here(monkeypatch):
    from distillq.core.job.models import cpu_has_bf16, teacher_dtype

    spec = spec_from_dict(base(students=[]))
    assert spec.students == () and spec.teacher is not None
    monkeypatch.setenv("DISTILLQ_DEVICE", "cpu")
    assert teacher_dtype("auto") == ("bfloat16" if cpu_has_bf16() else "float32")
    assert teacher_dtype("float32") == "float32"
    flags = Path("/proc/cpuinfo").read_text().split()
    assert cpu_has_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)
