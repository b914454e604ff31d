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


class Parser(argparse.ArgumentParser):
    """argparse, with a mistake on the command line said in one sentence (no usage block);
    subcommands' parsers are of this class too."""

    def error(self, message: str):
        self.exit(2, f"error: {message}; see `{self.prog} --help`.\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
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


def values_may_start_with_dash(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``--budget -3min`` as ``--budget=-3min``: argparse takes a value that starts with '-'
    (and is not a plain negative number) for an unknown option and says the option lacks
    its value; joined, the value reaches the command, which says what is wrong with it.
    Options are looked up in the parser of the (sub)command being parsed."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        known = parser._option_string_actions  # argparse's table of option strings
        action = known.get(arg)
        value = argv[i + 1] if i + 1 < len(argv) else ""
        if action is not None and action.nargs is None and value.startswith("-"):
            if value not in known and value != "--":
                out.append(f"{arg}={value}")
                i += 2
                continue
        for sub in parser._actions:  # a subcommand's name: its own options from here on
            if isinstance(sub, argparse._SubParsersAction) and arg in sub.choices:
                parser = sub.choices[arg]
        out.append(arg)
        i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(values_may_start_with_dash(parser, argv))
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
