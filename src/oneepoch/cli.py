"""Command-line entry point: the commands of oneepoch.commands, in the order of --help.

The list below is explicit: a command module that fails to import is an error, not a missing
command. What a command module holds is described in oneepoch.commands.
"""

from __future__ import annotations

import argparse
import sys

from oneepoch import __version__
from oneepoch.commands import (
    compare,
    data,
    demo,
    export,
    fit,
    plan,
    prepare,
    reproduce,
    sample,
    scaling,
    sweep,
    tensorboard,
    train,
    upgrade_checkpoints,
)
from oneepoch.errors import UserError

COMMANDS = {
    "prepare": prepare,
    "data": data,
    "train": train,
    "sample": sample,
    "fit": fit,
    "compare": compare,
    "scaling": scaling,
    "plan": plan,
    "sweep": sweep,
    "reproduce": reproduce,
    "demo": demo,
    "export": export,
    "tensorboard": tensorboard,
    "upgrade-checkpoints": upgrade_checkpoints,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oneepoch",
        description="Train Transformer language models one epoch at a time, sized for the "
        "budget, and analyse their learning curves.",
    )
    parser.add_argument("--version", action="version", version=f"oneepoch {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        command = subparsers.add_parser(name, help=module.HELP, description=module.DESCRIPTION)
        command.set_defaults(func=getattr(module, "run", None))
        module.add_arguments(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(code or 0)
