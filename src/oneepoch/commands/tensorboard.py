"""`oneepoch tensorboard RUN... --logdir DIR`: runs' metrics.jsonl as TensorBoard event files
(oneepoch.tensorboard)."""

from __future__ import annotations

from pathlib import Path

from oneepoch.cliflags import add_output_flags, print_json
from oneepoch.errors import UserError

HELP = "write runs' metrics as TensorBoard event files (train/val loss, lr, tokens/s, MFU)"
DESCRIPTION = """\
Convert each RUN's metrics.jsonl into TensorBoard event files in LOGDIR/<run name>, so
`tensorboard --logdir LOGDIR` shows the runs side by side. Converting again replaces the
earlier conversion.
"""


def add_arguments(p) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    p.add_argument("--logdir", required=True, help="TensorBoard log directory")
    add_output_flags(p, "what was written")


def run(args) -> int:
    from oneepoch.tensorboard import check_log_dir, write_events

    names = [Path(r).resolve().name for r in args.runs]
    if len(set(names)) != len(names):
        raise UserError(
            "two runs have the same folder name, so their logs would mix; convert them one "
            "at a time into different --logdir folders."
        )
    log_dirs = [check_log_dir(args.logdir, r) for r in args.runs]  # before any is written
    results = [write_events(r, d) for r, d in zip(args.runs, log_dirs)]
    if args.json:
        return print_json(results)
    for r in results:
        print(f"wrote {r['file']} ({r['lines']} lines)")
    print(f"view with: tensorboard --logdir {args.logdir}")
    return 0
