"""The command line: each subcommand takes only the flags it uses; every option says what it does."""

import argparse

import pytest

from distillq.app.cli import parser


def subcommands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.mark.parametrize(
    "argv",
    [
        ["pause", "j", "--json"],
        ["cancel", "j", "--timeout", "5"],
        ["resume", "j", "--interval", "2"],
        ["report", "j", "--timeout", "5"],
        ["status", "j", "--timeout", "5"],
        ["jobs", "--json"],
        ["export", "j", "--json"],
    ],
)
def test_flags_a_command_would_ignore_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as e:
        parser().parse_args(argv)
    assert e.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err


def test_the_flags_each_command_uses_are_accepted():
    p = parser()
    assert p.parse_args(["status", "j", "--json"]).json
    assert p.parse_args(["wait", "j", "--timeout", "5", "--interval", "0.5"]).interval == 0.5
    assert p.parse_args(["watch", "j", "--timeout", "0"]).timeout == 0
    assert p.parse_args(["report", "j", "--json"]).json
    ex = p.parse_args(["export", "j", "--track", "a", "--track", "b", "--gguf", "--quant", "q8_0"])
    assert ex.track == ["a", "b"] and ex.gguf and ex.quant == "q8_0"


def test_every_option_has_help_and_shows_a_real_default():
    for name, sp in subcommands().items():
        for action in sp._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.option_strings[0]} has no help"
        text = sp.format_help()
        assert "(default: None)" not in text and "(default: False)" not in text, name
    assert "(default: 0)" in subcommands()["worker"].format_help()  # a real default is shown
    assert "Flower" in subcommands()["up"].format_help()


def test_status_and_the_other_light_commands_import_no_heavy_library():
    """`status`, `watch`, `nodes`, `jobs`, `--help` and `from distillq import Client` answer in well under a second because
    nothing on their path imports torch, transformers, peft, h5py or matplotlib
    (bench/CLI.md measures them); this keeps it so."""
    import subprocess
    import sys

    probe = (
        "import sys; import distillq.app.cli, distillq.app.view, distillq.core.control.status, "
        "distillq.core.job.jobs, distillq.core.control.state, distillq.core.runtime.broker, "
        "distillq.workers.node, distillq.workers.cluster; "
        "from distillq import Client, Job; Client(); "  # the Python API's door too
        "heavy = ('torch', 'transformers', 'peft', 'h5py', 'matplotlib'); "
        "print([m for m in heavy if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
