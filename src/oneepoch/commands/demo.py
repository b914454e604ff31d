"""`oneepoch demo`: the main job on the built-in corpus.

Prepares the built-in corpus when absent, runs `oneepoch reproduce --preset tiny` (the
paper's five experiments sized for a 2-core CPU), prints the report's path and a text
sample from the one-epoch model.
"""

from __future__ import annotations

import sys
from pathlib import Path

from oneepoch.errors import UserError

HELP = "the paper's experiments on the built-in corpus, with a report (11-22 min on 2 CPU cores)"
DESCRIPTION = """\
Prepare the built-in corpus (when absent), run `oneepoch reproduce --preset tiny` on it, and
print the report's path and a sample of the one-epoch model's text.
"""


def add_arguments(p) -> None:
    p.add_argument("--data", default="data/builtin", help="where the built-in corpus is prepared")
    p.add_argument("--out", default="demo", help="output folder (default ./demo)")
    p.add_argument("--preset", default="tiny", help="reproduce preset (default tiny)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per run (default 1)")


def run(args) -> int:
    from oneepoch.launch import Here
    from oneepoch.reproduce.job import prepare_builtin, run_job, summary_text
    from oneepoch.reproduce.jobdir import JobDir
    from oneepoch.reproduce.presets import get_preset
    from oneepoch.runqueue import Stopped
    from oneepoch.sample import sample_text

    preset, data, out = get_preset(args.preset), Path(args.data), Path(args.out)
    if args.seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {args.seeds}.")
    if not (data / "manifest.json").is_file():
        prepare_builtin(data)
    print(f"\n== the paper's experiments, --preset {args.preset}, into {out}/")
    try:
        paths = run_job(out, preset, data, args.seeds, launch=Here())
    except Stopped as exc:
        print(exc, file=sys.stderr)
        return 128 + exc.signum
    print(summary_text(paths))
    print("\n== a sample from the one-epoch model (seed 0)")
    one = JobDir(out).trained_run(0, "one-epoch")  # experiment 3 may have trained it longer
    print(sample_text(one.path, "The king", max_new_tokens=60))
    print(f"\nopen {JobDir(out).report_html} in a browser for the report")
    return 0
