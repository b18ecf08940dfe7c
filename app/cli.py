"""``distillq``: subcommands map to plain functions; user errors print one line and exit 1.

Each group of commands registers its own flags beside its handlers (``app/commands/``).
"""

from __future__ import annotations

import argparse
import logging
import sys

from distillq.app.commands import cluster, jobs, outputs, progress
from distillq.app.commands.common import Handler
from distillq.app.view import EXIT_FAILED
from distillq.errors import DistillqError

GROUPS = (cluster, jobs, progress, outputs)


class _Help(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default after its help text; an unset or off default goes unsaid
    (the help says what "unset" means)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is False
        if not unset and action.default != argparse.SUPPRESS and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--broker",
        help="Redis URL; unset: $DISTILLQ_BROKER_URL, else a running `distillq up` cluster's",
    )
    common.add_argument(
        "--storage", help="shared storage root; unset: $DISTILLQ_STORAGE, else ./distillq-data"
    )
    p = argparse.ArgumentParser(
        prog="distillq", description="Distill LLMs over Celery queues on Redis."
    )
    sub = p.add_subparsers(dest="cmd", required=True)

    def add(name: str, fn: Handler, help: str, description: str = "") -> argparse.ArgumentParser:
        sp = sub.add_parser(
            name,
            parents=[common],
            help=help,
            description=description or help,
            formatter_class=_Help,
        )
        sp.set_defaults(fn=fn)
        return sp

    for group in GROUPS:
        group.register(add)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        code = args.fn(args)
    except DistillqError as e:
        print(f"distillq {args.cmd}: {e}", file=sys.stderr)
        code = EXIT_FAILED
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
