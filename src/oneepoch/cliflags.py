"""Command-line pieces the commands share (torch-free): flags of config settings with their
defaults and help text taken from the config dataclasses, the flags several commands take
(bootstrap intervals), the check of output file paths, and one JSON printer for every
command's --json.

A flag of a config setting is declared once, in ``oneepoch.config.CONFIG_FLAGS``; ``oneepoch train`` takes
all of them as overrides (``None`` unless given), and commands that run or plan training
(``plan``, ``sweep``) take the few they need with the config's default.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from oneepoch.config import CONFIG_FLAGS, RunConfig
from oneepoch.errors import UserError

SIGPIPE_EXIT = 141  # what a shell reports for a command stopped by a closed pipe

METAVARS = {"--tensorboard": "DIR", "--target-loss": "X"}


def config_default(setting: str):
    """The default of "section.key" in RunConfig."""
    section, key = setting.split(".")
    return getattr(getattr(RunConfig(), section), key)


def flag_help(flag: str) -> str:
    setting, text = CONFIG_FLAGS[flag]
    value = config_default(setting)
    if "{default" in text:
        return text.format(default=value)
    return text if "default" in text else f"{text} (default {value})"


def add_config_flags(parser: argparse.ArgumentParser, flags, overrides: bool = False) -> None:
    """Declare ``flags`` (keys of CONFIG_FLAGS), dest the setting's key. ``overrides``: the
    default is None (the flag overrides a config file only when given); else the config's."""
    for flag in flags:
        setting, _ = CONFIG_FLAGS[flag]
        value = config_default(setting)
        parser.add_argument(
            flag,
            dest=setting.split(".")[1],
            type=type(value),
            default=None if overrides else value,
            metavar=METAVARS.get(flag),
            help=flag_help(flag),
        )


def add_option(parser, flag: str, default, text: str, **kw) -> None:
    """A flag whose type and help's "(default X)" come from its ``default``."""
    parser.add_argument(
        flag, type=type(default), default=default, help=f"{text} (default {default:g})", **kw
    )


def needs_subcommand(parser: argparse.ArgumentParser) -> None:
    """A command of subcommands (`oneepoch data`, `oneepoch scaling`): given none, it prints
    its help and exits 2."""
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def check_positive(**flags) -> None:
    """Refuse a flag (given as its dest name) whose value is not a finite number above 0:
    NaN passes every comparison and inf most."""
    for name, value in flags.items():
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UserError(
                f"--{name.replace('_', '-')} must be a finite number above 0, not {value}."
            )


def add_sweep_csv_flags(parser, loss_default: str | None = "final") -> None:
    """--loss and --params of the scaling CSV (`scaling sweep-csv`, `oneepoch sweep`).
    ``loss_default`` None: the command chooses (`sweep`: best with --epochs)."""
    parser.add_argument(
        "--loss",
        choices=("final", "best"),
        default=loss_default,
        help="final or best validation loss (best: with the tokens seen at that evaluation); "
        + ("default final" if loss_default else "default final, best with --epochs"),
    )
    parser.add_argument(
        "--params",
        choices=("non-embedding", "total"),
        default="non-embedding",
        help="which run.json parameter count (default non-embedding)",
    )


def add_uncertainty_flags(parser: argparse.ArgumentParser, n_boot: int = 200) -> None:
    """--bootstrap, --level and --seed of the commands that report bootstrap intervals."""
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=n_boot,
        metavar="N",
        help=f"bootstrap replicates for intervals (default {n_boot})",
    )
    add_option(parser, "--level", 0.9, "two-sided interval level")
    add_option(parser, "--seed", 0, "bootstrap seed")


MAX_BOOTSTRAP = 1_000_000  # past this the intervals' own sampling error (~1/sqrt(n)) is nil


def check_uncertainty_flags(args) -> None:
    from oneepoch.config import check_seed

    if not 0 <= args.bootstrap <= MAX_BOOTSTRAP:
        raise UserError(
            f"--bootstrap must be from 0 to {MAX_BOOTSTRAP:,} replicates, not {args.bootstrap}."
        )
    if not 0 < args.level < 1:
        raise UserError(f"--level must be between 0 and 1, not {args.level}.")
    check_seed(args.seed, "--seed")


# What matplotlib writes by the name's ending (without LaTeX or raw buffers).
IMAGE_SUFFIXES = (".png", ".pdf", ".svg", ".svgz", ".eps", ".ps", ".jpg", ".jpeg", ".tif", ".tiff")
IMAGE_SUFFIXES += (".webp",)


def check_output_files(*paths, inputs=(), plot: str | None = None) -> None:
    """Output files go into existing folders and never over one of the command's
    ``inputs``; a ``plot`` is named as an image. Said before the work, not after it."""
    if plot:
        suffix = Path(plot).suffix.lower()
        if suffix not in IMAGE_SUFFIXES:
            ending = f"the ending {suffix}" if suffix else "a name without an ending"
            raise UserError(
                f"--plot {plot}: the image format is chosen by the file name's ending, and "
                f"{ending} names none; end it in .png, .pdf or .svg."
            )
    outputs = [Path(p) for p in (*paths, plot) if p and p != "-"]
    if len({p.resolve() for p in outputs}) < len(outputs):
        raise UserError("two outputs of this command name the same file; give each its own.")
    for p in outputs:
        if p.is_dir():
            raise UserError(f"{p} is a folder; give a file name to write to.")
        if not p.parent.is_dir():
            raise UserError(f"the folder of {p} ({p.parent}) does not exist; create it first.")
        for source in inputs:
            if source and p.exists() and Path(source).exists() and os.path.samefile(p, source):
                raise UserError(
                    f"{p} is also an input of this command, and writing the output there would "
                    "overwrite it; give the output another name."
                )


def jsonable(obj):
    """Plain JSON types: numpy scalars to Python, non-finite floats to None."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def json_text(data) -> str:
    """``data`` as the indented, strict JSON every command writes (NaN and inf as null)."""
    return json.dumps(jsonable(data), indent=2, allow_nan=False)


def emit(text: str) -> int:
    """Print ``text`` to stdout; 0, or SIGPIPE_EXIT without a word when the reader has gone
    (`oneepoch data inspect DIR | head -1`), as a shell tool stopped by SIGPIPE would."""
    try:
        print(text, file=sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would complain again when it flushes stdout at exit: point it at nothing.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return SIGPIPE_EXIT
    return 0


def print_json(data) -> int:
    """What every command prints with --json; the exit status (see ``emit``)."""
    return emit(json_text(data))


def add_output_flags(
    parser, prints: str, progress: str | None = None, dry_run: str | None = None
) -> None:
    """--json (print ``prints`` as JSON instead of text); for commands that show progress,
    --quiet (``progress`` says what it silences); for commands that train many runs,
    --dry-run (``dry_run`` says what it prints instead)."""
    if dry_run:
        parser.add_argument("--dry-run", "--plan", action="store_true", help=dry_run)
    if progress:
        parser.add_argument("--quiet", action="store_true", help=f"no {progress}")
    parser.add_argument("--json", action="store_true", help=f"print {prints} as JSON")


def add_launch_flags(parser: argparse.ArgumentParser, devices: bool = False) -> None:
    """Where the runs of `sweep` and `reproduce` train (oneepoch.launch): --nproc-per-node
    and the node options of torchrun, and for runs whose wall-clock is not compared,
    --devices."""
    group = parser.add_argument_group('devices (docs/performance.md, "Many runs")')
    group.add_argument(
        "--nproc-per-node",
        type=int,
        default=1,
        metavar="N",
        help="train each run on N processes of one torchrun job for the whole command (one "
        "per GPU, or CPU processes with --device cpu), the run's batch split over them "
        "(default 1: this process)",
    )
    group.add_argument(
        "--nnodes",
        type=int,
        default=1,
        help="nodes of that job: run the same command on each, with its --node-rank and node "
        "0's --master-addr (default 1)",
    )
    group.add_argument("--node-rank", type=int, default=0, help="this node's rank (default 0)")
    group.add_argument("--master-addr", metavar="HOST", help="node 0's address (several nodes)")
    group.add_argument(
        "--master-port", type=int, default=29500, help="node 0's port (default 29500)"
    )
    if devices:
        group.add_argument(
            "--devices",
            metavar="LIST",
            help="train independent runs at once, one process per slot pinned to it: GPUs "
            "(cuda:0,cuda:1) or sets of CPU cores (cpu:0-3,cpu:4-7); a run that fails does "
            "not stop the others",
        )
