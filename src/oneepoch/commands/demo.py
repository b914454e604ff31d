"""`oneepoch demo`: the main job on the built-in corpus.

Prepares the built-in corpus when absent, runs `oneepoch reproduce --preset tiny` (the
paper's five experiments sized for a 2-core CPU), prints the report's path and a text
sample from the one-epoch model.
"""

from __future__ import annotations

from pathlib import Path

from oneepoch.errors import UserError

HELP = "the paper's experiments on the built-in corpus, with a report (~10 min on 2 CPU cores)"
DESCRIPTION = """\
Prepare the built-in corpus (when absent), run `oneepoch reproduce --preset tiny` on it, and
print the report's path and a sample of the one-epoch model's text.
"""


def add_arguments(p) -> None:
    p.add_argument("--data", default="data/builtin", help="where the built-in corpus is prepared")
    p.add_argument("--out", default="demo", help="output folder (default ./demo)")
    p.add_argument("--preset", default="tiny", help="reproduce preset (default tiny)")
    p.add_argument("--seeds", default="1", help="seeds per run (default 1)")


def _cli(*args: str) -> None:
    from oneepoch.cli import main

    code = main(list(args))
    if code:
        raise UserError(
            f"the demo step `oneepoch {' '.join(args)}` failed (exit {code}); see above."
        )


def run(args) -> int:
    if not (Path(args.data) / "manifest.json").is_file():
        print(f"== preparing the built-in corpus into {args.data}")
        _cli("prepare", "--source", "builtin", "--out", args.data)
    print(f"\n== the paper's experiments, --preset {args.preset}, into {args.out}/")
    _cli(
        "reproduce", "--preset", args.preset, "--data", args.data, "--out", args.out,
        "--seeds", args.seeds,
    )  # fmt: skip
    from oneepoch.reproduce.job import trained_dir

    print("\n== a sample from the one-epoch model (seed 0)")
    one = trained_dir(Path(args.out), 0, "one-epoch")  # experiment 3 may have trained it longer
    _cli("sample", str(one), "--prompt", "The king", "--max-new-tokens", "60")
    print(f"\nopen {Path(args.out) / 'report.html'} in a browser for the report")
    return 0
