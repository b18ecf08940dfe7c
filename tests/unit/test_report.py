"""The report's picture and text: legends off the data, warnings where numbers mislead."""

from __future__ import annotations

import math
import types

from distillq.core.report import markdown as report_md
from distillq.core.report import report
from distillq.storage.layout import JobPaths
from distillq.storage.records import Generation
from distillq.storage.report_records import (
    CacheSummary,
    LossSummary,
    Report,
    StudentSummary,
    TeacherSummary,
)


def _student(baseline: float, final: float) -> StudentSummary:
    return StudentSummary(
        model="/m",
        method="lora",
        replicas=1,
        loss=LossSummary("forward_kl", 0.5),
        eval_loss=final,
        version=4,
        steps=40,
        tokens=1000,
        tokens_per_s=100.0,
        baseline_loss=baseline,
        heldout_curve=[[0, baseline], [10, (baseline + final) / 2], [40, final]],
        generations=[Generation("def f(", "x):", "y):")],
        padding=[0.02, 0.4],
    )


def _report(eval_samples: int, students: dict[str, StudentSummary]) -> Report:
    teacher = TeacherSummary("/t", 3.0, 10, 1.0, [Generation("def f(", "x):", "teacher says")])
    return Report(
        job_id="j",
        mode="teacher_student",
        records=100,
        eval_records=10,
        shards=4,
        cache=CacheSummary(1000, 10, 100.0, 64),
        students=students,
        teacher=teacher,
        vocab_size=4096,
        eval_samples=eval_samples,
        warnings=report.warnings(eval_samples, students, teacher, 4096),
    )


def test_warnings_flag_a_small_held_out_set_and_a_track_that_learned_nothing():
    students = {"kd": _student(8.0, 5.0), "lazy": _student(8.25, 8.24)}
    data = _report(12, students)
    assert any("12 samples (fewer than 50)" in w for w in data.warnings)
    assert [w for w in data.warnings if "learned little" in w] == [
        "track lazy learned little: held-out 8.2400 vs 8.2500 before training, uniform "
        "guessing is ln V = 8.32; train longer, raise lr, or check the data"
    ]
    assert not _report(80, {"kd": _student(8.0, 5.0)}).warnings


def test_report_md_shows_baseline_to_final_the_curve_and_generations():
    md = report_md.render(_report(80, {"kd": _student(8.0, 5.0)}))
    assert "| kd | lora | 0.5 | 8.0000 | 5.0000 | -3.0000 | 60% |" in md  # 3 of the 5-nat gap
    assert "| 10 | 6.5000 |" in md
    assert "teacher says" in md and "**kd**" in md
    assert "(had batches been consecutive samples): kd 2.0% (40.0%)." in md


def test_the_report_says_how_much_of_the_ce_to_teacher_gap_each_track_closed():
    import dataclasses

    ce = dataclasses.replace(_student(8.0, 4.0), loss=LossSummary("forward_kl", 1.0))
    students = {"kd": _student(8.0, 3.7), "ce": ce}
    data = _report(80, students)
    track, closed = report.ce_gap(students, data.teacher)
    assert track == "ce" and closed == {"kd": 0.3}  # (4.0 − 3.7) / (4.0 − 3.0)
    data = dataclasses.replace(data, ce_track=track, ce_gap_closed=closed)
    md = report_md.render(data)
    assert "CE-only track ce (4.0000) and the teacher (3.0000)" in md and "**kd** 30%" in md
    assert "kd closed 30% of the held-out gap between the CE-only track ce" in (
        report.summary_table(data)
    )
    # No CE-only track, or one already at the teacher: nothing to measure against.
    assert report.ce_gap({"kd": students["kd"]}, data.teacher) == (None, {})
    at_teacher = dataclasses.replace(ce, eval_loss=2.9)
    assert report.ce_gap({"kd": students["kd"], "ce": at_teacher}, data.teacher) == (None, {})


def test_tracks_of_another_tokenizer_compare_in_bits_per_byte():
    """Nats per token do not compare across tokenizers (a finer one has more, easier tokens):
    the gap is measured in bits per byte when every model has it."""
    import dataclasses

    from distillq.storage.report_records import AlignmentSummary

    cross = AlignmentSummary(exact=70, chain=1, split=19, none=10, bytes=4200)
    kd = dataclasses.replace(_student(9.0, 6.0), eval_bpb=2.40, alignment=cross)
    ce = dataclasses.replace(
        _student(9.0, 5.9), loss=LossSummary("forward_kl", 1.0), eval_bpb=2.45, alignment=cross
    )
    data = _report(80, {"kd": kd, "ce": ce})
    teacher = dataclasses.replace(data.teacher, eval_bpb=1.2)
    # In nats the KD track looks worse than CE (6.0 > 5.9); in bits per byte it is better.
    track, closed = report.ce_gap({"kd": kd, "ce": ce}, teacher)
    assert track == "ce" and closed == {"kd": 0.04}  # (2.45 − 2.40) / (2.45 − 1.2)
    md = report_md.render(
        dataclasses.replace(data, teacher=teacher, ce_track=track, ce_gap_closed=closed)
    )
    assert "| kd | lora | 0.5 | 9.0000 | 6.0000 | -3.0000 | 50% | 2.4000 |" in md
    assert "| teacher | | | | 3.0000 | | | 1.2000 |" in md
    assert "(2.4500) and the teacher (1.2000)" in md and "in bits per byte: **kd** 4%" in md
    assert "bits per byte do" in md
    # One model without bytes (a served teacher's loss leaves positions out): nats again.
    assert report.ce_gap({"kd": kd, "ce": ce}, data.teacher) == ("ce", {"kd": -0.0345})


def test_bits_per_byte_count_the_bytes_of_every_target_token(real_tokenizers):
    from distillq.core.job.data import Sample
    from distillq.core.student.evaluate import with_bytes
    from distillq.storage.records import EvalResult

    tok = real_tokenizers("phi3")
    text = "def café(x):\n    return 3.14 * x"
    ids = tok.encode(text, add_special_tokens=False)
    sample = Sample(0, ids, [True] * len(ids))  # the first token predicts nothing
    first = tok.decode(ids[:1]).lstrip().encode()
    ev = with_bytes(EvalResult(loss=1.5, tokens=len(ids) - 1), tok, [sample])
    assert ev.bytes == len(text.encode()) - len(first)
    assert ev.bits_per_byte == 1.5 * (len(ids) - 1) / ev.bytes / math.log(2)
    # A loss over fewer tokens than the targets (a served teacher's) gets no bytes.
    assert with_bytes(EvalResult(loss=1.5, tokens=len(ids) - 2), tok, [sample]).bytes == 0


def test_legends_sit_outside_every_plot(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = _report(80, {"kd": _student(8.0, 5.0), "ce": _student(8.0, 6.0)})
    curves = {n: [[s, 0.0, 8.0 - s / 10, 1.0] for s in range(1, 41)] for n in data.students}
    job = types.SimpleNamespace(id="j", paths=JobPaths(tmp_path))
    drawn = []
    real_close = plt.close
    plt.close = lambda fig: drawn.append(fig)  # keep the figure to measure it
    try:
        report.plot(job, data, curves, [("teacher", 0.0, 1.0, 10.0), ("kd", 1.0, 2.0, 5.0)])
    finally:
        plt.close = real_close
    fig = drawn[0]
    fig.canvas.draw()
    legends = 0
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is None:
            continue
        legends += 1
        box, area = legend.get_window_extent(), ax.get_window_extent()
        assert box.x0 >= area.x1 - 1, f"legend of {ax.get_title()!r} overlaps its plot"
    assert legends == 2
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_a_model_card_parses_with_the_hubs_parser_and_says_what_the_model_is():
    import dataclasses

    from huggingface_hub import ModelCard

    from distillq.core.job.load import spec_from_dict
    from distillq.core.report.card import render

    spec = spec_from_dict({
        "name": "x", "dataset": "/d/stories.jsonl", "teacher": {"model": "/t"},
        "students": [{"name": "kd", "model": "/m", "peft": {"method": "lora"}},
                     {"name": "ce", "model": "/m", "loss": {"alpha": 1.0}}],
    })  # fmt: skip
    data = _report(60, {"kd": _student(8.0, 4.0), "ce": _student(8.0, 5.0)})
    data = dataclasses.replace(data, ce_track="ce", ce_gap_closed={"kd": 0.5})
    card = ModelCard(render(spec, data, "kd", "adapter"))
    assert card.data.library_name == "peft" and card.data.base_model == "/m"
    assert card.data.datasets == ["stories"] and card.data.pipeline_tag == "text-generation"
    assert card.data.eval_results[0].metric_value == 4.0
    assert "| ce (same student, CE only) | 5.0000 |" in card.text
    assert "closes 50% of the held-out gap" in card.text
    assert "PeftModel.from_pretrained" in card.text
    merged = ModelCard(render(spec, data, "ce", "merged"))
    assert merged.data.library_name == "transformers"
    assert "AutoModelForCausalLM.from_pretrained" in merged.text
