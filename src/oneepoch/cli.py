"""Command-line entry point.

Each command lives in its package's ``cli`` module (or, for one-module commands, the module
itself), which exposes ``register(subparsers)``; that function adds the parser and sets
``func`` (called with the parsed args, returns an exit code or None). The list below is
explicit: a command module that fails to import is an error, not a missing command. Command
modules import heavy libraries (torch, scipy, matplotlib) inside their functions, so
``oneepoch --help`` is fast and the analysis commands run without torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from oneepoch import __version__
from oneepoch.errors import UserError

# Modules that register subcommands, in the order they appear in --help. Each is imported
# as is: a command whose module is broken fails loudly instead of vanishing from --help.
COMMAND_MODULES = [
    "oneepoch.data.cli",  # prepare, data inspect
    "oneepoch.train_cli",  # train, sample
    "oneepoch.analysis.cli",  # fit, compare, scaling
    "oneepoch.plan.cli",  # plan, sweep
    "oneepoch.reproduce.cli",  # reproduce
    "oneepoch.demo",  # demo
    "oneepoch.export",  # export
    "oneepoch.tensorboard",  # tensorboard
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oneepoch",
        description="Train Transformer language models one epoch at a time, sized for the "
        "budget, and analyse their learning curves.",
    )
    parser.add_argument("--version", action="version", version=f"oneepoch {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
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
