import pytest

from distillq.core.job.spec import apply_override, load_spec, spec_from_dict
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
        ({"students": []}, "students is empty"),
        ({"students": [{"name": "../x", "model": "m"}]}, "not allowed"),
        ({"name": "a/b"}, "not allowed"),
        ({"loss": {"temperature": 2.0}}, "set both to the same value"),
        ({"teacher": {"model": "t", "top_k": -1}}, "must be positive"),
        ({"shards": -2}, "shards=-2 must be positive; set it above 0"),
        ({"loss": {"kind": "forward-kl"}}, "did you mean 'forward_kl'"),
        ({"overlong": "cut"}, r"overlong='cut' is not one of \['truncate', 'refuse'\]"),
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
