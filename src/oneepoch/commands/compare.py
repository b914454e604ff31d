"""`oneepoch compare RUN_A RUN_B`: the cost of reaching the same loss (oneepoch.analysis.compare)."""

from __future__ import annotations

from oneepoch.analysis.format import format_estimate, format_number
from oneepoch.cliflags import (
    add_output_flags,
    add_uncertainty_flags,
    check_positive,
    check_uncertainty_flags,
    print_json,
)
from oneepoch.errors import UserError

HELP = "wall-clock, step, token and FLOP speedup of run B over run A"
DESCRIPTION = """\
Cost ratios (A's cost / B's cost) for reaching the same validation loss, by default the best
loss the worse run reached.
"""


def add_arguments(p) -> None:
    p.add_argument("run_a", metavar="RUN_A")
    p.add_argument("run_b", metavar="RUN_B")
    p.add_argument("--target-loss", type=float, metavar="X", help="loss both runs must reach")
    add_output_flags(p, "the results")
    add_uncertainty_flags(p)


def run(args) -> int:
    from oneepoch.analysis.compare import SPEEDUPS, compare_runs
    from oneepoch.analysis.runs import load_run

    check_uncertainty_flags(args)
    check_positive(target_loss=args.target_loss)
    a, b = load_run(args.run_a), load_run(args.run_b)
    for run in (a, b):
        if run.evals["val_loss"].size == 0:
            raise UserError(f"{run.path} has no evaluations with val_loss; nothing to compare.")
    result = compare_runs(
        a, b, args.target_loss, n_boot=args.bootstrap, level=args.level, seed=args.seed
    )
    if args.json:
        return print_json(result)
    print(f"target loss {result['target_loss']:.4f} ({result['target_source']})")
    for key in ("A", "B"):
        cost = result[key]
        how = "reached" if cost["reached"] else "NEVER REACHED: extrapolated with a power-law fit"
        parts = [f"{axis} {format_estimate(cost[axis])}" for axis in SPEEDUPS if axis in cost]
        print(f"  {key} {result['run_' + key.lower()]}: {how}; " + ", ".join(parts))
    intervals = result.get("speedup_intervals", {})
    for name in SPEEDUPS.values():
        value = result[name]
        text = "n/a" if value is None else f"{value:.4g}x"
        if name in intervals:
            est = intervals[name]
            text += f" [{format_number(est['ci_low'])}, {format_number(est['ci_high'])}]"
        print(f"  {name}: {text} (A's cost / B's cost)")
    for note in result.get("notes", []):
        print(f"  note: {note}")
    return 0
