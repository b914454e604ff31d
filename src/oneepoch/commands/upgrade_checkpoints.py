"""`oneepoch upgrade-checkpoints FOLDER...`: checkpoints of older versions (a pickled
``state.pt``) rewritten as data (oneepoch.checkpoint.upgrade)."""

from __future__ import annotations

from pathlib import Path

from oneepoch.cliflags import add_output_flags, print_json

HELP = "convert checkpoints written by older versions (state.pt) into the current data format"
DESCRIPTION = """\
Checkpoints of older oneepoch versions kept the training state as a pickle (state.pt), and
loading a pickle can run code that whoever wrote the file put in it, so oneepoch no longer
reads them. Run this on a run directory (or a reproduce/sweep job's folder) you trust to
convert each old checkpoint in place: the pickle is read with torch's restricted loader,
which accepts tensors and plain values only and refuses anything else, its checksums are
verified first, and the state is rewritten as safetensors and JSON. Current checkpoints are
left as they are.
"""


def add_arguments(p) -> None:
    p.add_argument("folders", nargs="+", metavar="FOLDER", help="run directories or job folders")
    add_output_flags(p, "what was converted")


def run(args) -> int:
    from oneepoch.checkpoint import upgrade_all

    results = []
    for folder in args.folders:
        converted, current = upgrade_all(Path(folder))
        results.append(
            {"folder": folder, "converted": [str(d) for d in converted], "current": current}
        )
    if args.json:
        return print_json(results)
    for r in results:
        print(
            f"{r['folder']}: {len(r['converted'])} checkpoint(s) converted, "
            f"{r['current']} already current"
        )
    return 0
