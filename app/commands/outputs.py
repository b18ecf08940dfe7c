"""Commands about what a job makes: its report, exports, a cache record, a new student."""

from __future__ import annotations

import argparse
from pathlib import Path

from distillq.app.commands.common import Add, job_arg, json_flag, settings_from
from distillq.app.view import EXIT_FAILED
from distillq.errors import DistillqError


def register(add: Add) -> None:
    ini = add(
        "init-student",
        cmd_init_student,
        "write a smaller student of the teacher's architecture, with its tokenizer",
    )
    ini.add_argument("teacher", help="the teacher's model directory")
    ini.add_argument("--out", required=True, help="a new directory for the student")
    ini.add_argument("--layers", type=int, help="student depth (default: half the teacher's)")
    ini.add_argument(
        "--hidden", type=int, help="student width, a multiple of the head size (default: same)"
    )
    ini.add_argument(
        "--from-teacher-layers",
        action="store_true",
        help="start from every other teacher layer (evenly spread), embeddings and head copied "
        "(cut to the width)",
    )
    sh = add(
        "show",
        cmd_show,
        "print one record of a teacher cache shard: prompt, response, the teacher's targets",
    )
    job_arg(sh)
    sh.add_argument("--shard", type=int, help="shard number (-1: held-out slice)")
    sh.add_argument(
        "--round",
        type=int,
        help="with --track T of an on-policy track: what the student wrote in that round, "
        "with the teacher's scores (instead of --shard)",
    )
    sh.add_argument("--record", type=int, required=True, help="dataset record id (0-based)")
    sh.add_argument(
        "--track",
        help="a student track of another tokenizer: also its tokens beside the teacher's",
    )
    rp = add("report", cmd_report, "rewrite and print a finished job's report")
    job_arg(rp)
    json_flag(rp, "the report")
    ex = add(
        "export",
        cmd_export,
        "write a finished job's students as GGUF (llama.cpp) with an Ollama Modelfile",
    )
    job_arg(ex)
    ex.add_argument(
        "--track", action="append", help="a student track to export (repeatable); unset: all"
    )
    ex.add_argument(
        "--gguf", action="store_true", help="GGUF files + Modelfile (the default format)"
    )
    ex.add_argument("--quant", help="comma-separated GGUF types; unset: f16,q8_0")


def cmd_report(args: argparse.Namespace) -> int:
    from distillq.core.job.jobs import load_job
    from distillq.core.report import report

    s = settings_from(args)
    job = load_job(s.storage, args.job)
    if not job.paths.report.exists():
        raise DistillqError(
            f"job {job.id} has not finished; `distillq wait {job.id}` blocks until it does"
        )
    data = report.write(job)
    print(
        report.dumps(data)
        if args.json
        else report.summary_table(data) + f"\n  plot: {job.paths.report_png}"
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from distillq.app.view import run_hints
    from distillq.core.export.gguf import QUANTS
    from distillq.core.job.jobs import load_job
    from distillq.core.stages import export_finished

    job = load_job(settings_from(args).storage, args.job)
    quants = tuple(q.strip() for q in (args.quant or ",".join(QUANTS)).split(",") if q.strip())
    for q in quants:
        if q not in QUANTS:
            raise DistillqError(f"--quant {q!r} is not supported: choose from {', '.join(QUANTS)}")
    tracks = args.track or [s.name for s in job.spec.students]
    for name in tracks:
        job.spec.student(name)  # an unknown track fails here, before any work
    done = export_finished(job, tracks, quants)  # type: ignore[arg-type]
    failed = False
    for name, outputs in done.items():
        print(f"track {name}:")
        print(run_hints(outputs))
        failed |= outputs.gguf_skipped is not None
    return EXIT_FAILED if failed else 0


def cmd_show(args: argparse.Namespace) -> int:
    from distillq.core.job.jobs import load_job
    from distillq.core.job.models import sample_tokenizer
    from distillq.core.report.show import on_policy_files, show

    job = load_job(settings_from(args).storage, args.job)
    if (args.shard is None) == (args.round is None):
        raise DistillqError("show takes --shard N, or --round N with --track T (on-policy)")
    files = None
    if args.round is not None:
        if not args.track or job.spec.student(args.track).on_policy is None:
            raise DistillqError(
                "--round N shows an on-policy round: add --track T naming an on-policy track"
            )
        files = on_policy_files(job, args.track, args.round)
    for s in show(job, args.shard or 0, args.record, sample_tokenizer(job.spec), files=files):
        print(f"record {s.record_id} ({s.kind})")
        print("--- prompt\n" + s.prompt)
        print("--- response\n" + s.response)
        print("--- first targets: token  [teacher's top entries]")
        for token, entries in s.targets:
            tops = ", ".join(f"{t!r} {p:.2f}" for t, p in entries)
            print(f"  {token!r:<16} [{tops}]")
    if args.track and files is None:
        from distillq.core.report.show import side_by_side

        print(f"--- the teacher's tokens | student {args.track}'s tokens  (how they aligned)")
        for t_text, s_text, kind in side_by_side(job, args.shard, args.record, args.track):
            print(f"  {t_text:<28} | {s_text:<28} ({kind})")
    return 0


def cmd_init_student(args: argparse.Namespace) -> int:
    from distillq.core.job.load import local_model
    from distillq.core.student.init_student import init_student

    teacher = local_model(args.teacher, Path.cwd(), "teacher model")
    out, shape = init_student(
        teacher, Path(args.out), args.layers, args.hidden, args.from_teacher_layers
    )
    how = "initialised from the teacher's layers" if args.from_teacher_layers else "random init"
    print(
        f"student: {shape.layers} layers, hidden {shape.hidden}, {shape.heads} heads "
        f"({shape.kv_heads} key/value), MLP {shape.intermediate}, {how}, the teacher's tokenizer"
    )
    print(out)
    return 0
