"""`oneepoch sweep`: train an IsoFLOP grid of model sizes (oneepoch.plan.sweep) and write the
scaling CSV (as `oneepoch scaling sweep-csv` prints it)."""

from __future__ import annotations

import sys
from pathlib import Path

from oneepoch.cliflags import (
    add_config_flags,
    add_launch_flags,
    add_output_flags,
    add_sweep_csv_flags,
    check_positive,
    print_json,
)
from oneepoch.errors import UserError
from oneepoch.launch import Here
from oneepoch.plan.sweep import DEFAULT_EPOCHS
from oneepoch.rundir import RunDir
from oneepoch.runqueue import QueuedRun, RunQueue, Stopped

HELP = "train a grid of model sizes per compute budget and write the scaling CSV"
DESCRIPTION = """\
Train models of several sizes on the same compute budget (IsoFLOP), for one or more budgets,
then write DIR/sweep.csv for `oneepoch scaling fit`. With --epochs, every size is trained once
per epoch count on the same tokens, drawn from fewer unique tokens: a repetition grid for
`oneepoch scaling fit --form data-constrained`. Completed runs are skipped when the sweep is
run again; interrupted ones are resumed. The runs train one after another in this
process, each on the N processes of a torchrun job (--nproc-per-node), or several at once
on separate devices (--devices).
"""


def add_arguments(s) -> None:
    s.add_argument(
        "--budget",
        action="append",
        required=True,
        help="training FLOPs per run (3e14) or wall-clock per run (5min, converted to FLOPs "
        "at the budget's Chinchilla size); comma-separated or repeated",
    )
    s.add_argument(
        "--sizes",
        help="non-embedding parameter counts, comma-separated (100k,300k,1M); default: five "
        "sizes a factor 2 apart around each budget's Chinchilla-optimal size",
    )
    s.add_argument(
        "--epochs",
        nargs="?",
        const="default",
        metavar="E,E,...",
        help="train every size once per epoch count, on the same tokens drawn from tokens / E "
        "unique ones (1,4,16); alone: the default repetition grid, "
        f"{','.join(f'{e:g}' for e in DEFAULT_EPOCHS)}",
    )
    s.add_argument("--data", required=True, metavar="DATA_DIR")
    s.add_argument("--out", required=True, metavar="DIR", help="one run directory per grid point")
    add_config_flags(s, ["--seq-len", "--dtype", "--device", "--eval-tokens"])
    add_sweep_csv_flags(s, loss_default=None)
    add_launch_flags(s, devices=True)
    s.add_argument("--no-calibrate", action="store_true", help="measure no throughput")
    add_output_flags(
        s,
        "the grid and results",
        progress="training progress display",
        dry_run="print the grid and its placement, train nothing",
    )


def _split(values: list[str]) -> list[str]:
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def run(args) -> int:
    from oneepoch.launch import Slots, launch_from_args
    from oneepoch.plan.budget import parse_budget
    from oneepoch.units import parse_count

    check_positive(seq_len=args.seq_len, eval_tokens=args.eval_tokens)
    budgets = [parse_budget(b) for b in _split(args.budget)]
    sizes = (
        [parse_count(x, "parameter count") for x in _split([args.sizes])] if args.sizes else None
    )
    if sizes and min(sizes) <= 0:
        raise UserError("--sizes must be positive parameter counts.")
    epochs = parse_epochs(args.epochs)
    # repeated runs that overfit (their loss rises again) enter the CSV at their best point:
    # the data-constrained law has repetition add less and less, never raise the loss
    args.loss = args.loss or ("best" if epochs else "final")
    launch = launch_from_args(args, args.device)
    if isinstance(launch, Slots):
        kind = launch.slots[0].kind
        if args.device not in ("auto", kind):
            raise UserError(f"--device {args.device} and --devices {args.devices} disagree.")
        args.device = kind
    out = Path(args.out)
    if launch.node_rank > 0:  # node 0 plans and writes; this node lends its ranks
        launch.run(RunQueue("sweep", out, []))
        print(f"node {launch.node_rank}: done; the runs and sweep.csv are on node 0")
        return 0
    grid, notes, queue = plan_sweep(args, budgets, sizes, epochs, out)
    seconds = {pt["name"]: pt["plan"].estimate.elapsed_s for pt in grid if pt.get("queued")}
    for name, where in launch.placement(seconds).items():
        next(pt for pt in grid if pt["name"] == name)["placement"] = where
    if not args.json:
        print_grid(grid, notes, launch)
    if args.dry_run:
        return _json(grid, notes, None) if args.json else 0
    try:
        outcome = launch.run(queue)
    except Stopped as exc:
        print(exc, file=sys.stderr)
        return 128 + exc.signum
    for point in grid:
        if point.get("queued"):
            point["action"] = "failed" if point["name"] in outcome.failed else "trained"
    done = [out / pt["name"] for pt in grid if RunDir(out / pt["name"]).status()[0] == "completed"]
    csv_path = write_csv(out, done, args) if done or not outcome.failed else None
    for name, why in outcome.failed.items():
        print(f"failed: {name}: {why}", file=sys.stderr)
    if args.json:
        _json(grid, notes, csv_path)
    elif len(done) >= scaling_fit_rows():
        form = " --form data-constrained" if epochs else ""
        print(
            f"written: {csv_path}; fit it with "
            f"`oneepoch scaling fit --csv {csv_path}{form} --json law.json`"
        )
    elif csv_path:
        print(
            f"written: {csv_path} ({len(done)} rows, fewer than the {scaling_fit_rows()} "
            "`oneepoch scaling fit` needs)"
        )
    if outcome.failed:
        print(
            f"{len(outcome.failed)} run(s) failed (above); the others are kept: fix the cause "
            "and run the same command again to train them",
            file=sys.stderr,
        )
        return 1
    return 0


def plan_sweep(args, budgets, sizes, epochs, out: Path) -> tuple[list[dict], list[str], RunQueue]:
    """The grid (each point with its action), notes on it, and the queue of its runs."""
    from oneepoch.config import total_steps
    from oneepoch.plan.calibrate import Calibration
    from oneepoch.plan.planfile import config_of_plan
    from oneepoch.plan.planner import Planner, Settings, corpus_of_dataset
    from oneepoch.plan.sweep import build_grid

    corpus = corpus_of_dataset(args.data)
    settings = Settings(seq_len=args.seq_len, eval_tokens=args.eval_tokens)
    calib = Calibration(args.device, args.dtype, measure=not args.no_calibrate)
    planner = Planner(corpus, settings, calib)
    try:
        grid, notes = build_grid(planner, budgets, sizes, epochs)
    finally:
        calib.close()  # measuring is over before training starts
    runs = []
    for point in grid:
        plan, run_dir = point["plan"], out / point["name"]
        status = RunDir(run_dir).status()[0]
        if plan.problem:
            point["action"] = "skip: " + plan.problem
        elif status == "completed":
            point["action"] = "done"
        else:
            point["action"] = "resume" if status != "new" else "train"
            cfg = config_of_plan(plan, corpus, settings, calib)
            cfg.forecast.live = False  # nobody watches a sweep's runs one by one
            runs.append(
                QueuedRun(point["name"], run_dir, cfg.to_dict(), total_steps(cfg), plan.flops)
            )
            point["queued"] = True
    notes += _too_few(grid, epochs)
    if epochs:
        if not args.json:
            print("checking that the grid can identify R_D* (simulated trial laws)...", flush=True)
        notes += _identifies_r_d(grid)
    queue = RunQueue("sweep", out, runs, show=not args.quiet, trainer_progress=not args.quiet)
    return grid, notes, queue


def print_grid(grid: list[dict], notes: list[str], launch) -> None:
    from oneepoch.units import format_seconds

    width = max([26] + [len(pt["name"]) + 2 for pt in grid])
    print(
        f"{'run':<{width}}{'non-emb params':>15}{'tokens':>13}{'unique':>13}{'epochs':>8}"
        f"{'steps':>8}{'est. time':>11}  action"
    )
    for point in grid:
        p = point["plan"]
        shown = "placement" in point and not isinstance(launch, Here)
        where = f" on {point['placement']}" if shown else ""
        print(
            f"{point['name']:<{width}}{p.candidate.non_embedding:>15,}{p.tokens:>13,}"
            f"{p.unique_tokens:>13,}{p.epochs:>8.2f}{p.steps:>8,}"
            f"{format_seconds(p.estimate.elapsed_s):>11}  {point['action']}{where}"
        )
    todo = [pt for pt in grid if pt.get("queued")]
    total = sum(pt["plan"].estimate.elapsed_s for pt in todo)
    print(f"{len(todo)} runs to train, about {format_seconds(total)} in all")
    print(f"placement: {launch.describe()}")
    for line in notes:
        print(f"note: {line}")


def scaling_fit_rows() -> int:
    """The fewest CSV rows `oneepoch scaling fit` (the chinchilla form) accepts."""
    from oneepoch.analysis.scaling import ChinchillaForm

    return len(ChinchillaForm.free_names) + 2


def parse_epochs(text: str | None) -> list[float] | None:
    """--epochs: None (no repetition grid), "default", or a comma-separated list."""
    if text is None:
        return None
    if text == "default":
        return list(DEFAULT_EPOCHS)
    try:
        values = sorted({float(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise UserError(
            f"--epochs takes epoch counts separated by commas (1,4,16), not {text!r}."
        ) from None
    if not values or not all(1 <= v < float("inf") for v in values):
        raise UserError(f"--epochs must be finite counts of 1 or more, not {text!r}.")
    return values


def _too_few(grid: list[dict], epochs: list[float] | None) -> list[str]:
    """Notes when the grid's runs will be too few for `oneepoch scaling fit`: the chinchilla
    form's rows, and with --epochs the single-epoch rows the paper's procedure fits its
    Chinchilla terms on (whether R_D* is identified: ``_identifies_r_d``)."""
    from oneepoch.analysis.scaling import paper_base_rows

    runs = [pt for pt in grid if not pt["plan"].problem]
    need = scaling_fit_rows()
    if not epochs:
        if len(runs) >= need:
            return []
        return [
            f"{len(runs)} runs are fewer than the {need} rows `oneepoch scaling fit` needs "
            "for its five terms: add budgets or sizes (--sizes)"
        ]
    out = []
    single = sum(1 for pt in runs if pt["plan"].epochs == 1)
    if single < paper_base_rows():
        tied = (
            f" (it takes {paper_base_rows(tie=True)} with --tie alpha=beta)"
            if single >= paper_base_rows(tie=True)
            else ""
        )
        out.append(
            f"{single} single-epoch runs are fewer than the {paper_base_rows()} the paper's "
            "procedure (`scaling fit --form data-constrained`) fits its Chinchilla terms on"
            f"{tied}: add budgets or sizes, or 1 to --epochs"
        )
    return out


def _identifies_r_d(grid: list[dict]) -> list[str]:
    """A note saying whether the planned grid would identify R_D* (analysis.design_check)."""
    from oneepoch.analysis.design_check import r_d_identification

    runs = [pt["plan"] for pt in grid if not pt["plan"].problem]
    N = [p.candidate.non_embedding for p in runs]
    D = [p.tokens for p in runs]
    U = [p.unique_tokens for p in runs]
    trials = r_d_identification(N, D, U)
    reasons = {t["reason"] for t in trials if "reason" in t}
    if reasons:
        return [f"this grid is too small to identify R_D*: {min(reasons).rstrip('.')}"]
    found = [t["R_D_star"] for t in trials if t["identified"]]
    tried = ", ".join(f"{t['R_D_star']:g}" for t in trials)
    fit = "`scaling fit --form data-constrained" + (
        " --tie alpha=beta`" if trials[0]["tie"] else "`"
    )
    if len(found) == len(trials):
        return [
            f"simulated on this grid, laws with R_D* = {tried} (0.5% noise) all have R_D* "
            f"identified by {fit}"
        ]
    missed = ", ".join(f"{t['R_D_star']:g}" for t in trials if not t["identified"])
    return [
        f"this grid is too small to identify R_D* for every plausible law: simulated with "
        f"R_D* = {tried} (0.5% noise), {fit} leaves R_D* = {missed} not identified; add "
        "sizes, budgets or larger epoch counts (up to 48)"
    ]


def write_csv(out: Path, run_dirs: list[Path], args) -> Path:
    """out/sweep.csv, as `oneepoch scaling sweep-csv RUN_DIR... --loss --params` prints it."""
    from oneepoch.analysis.scaling import write_sweep_csv

    if not run_dirs:
        raise UserError("no run of the sweep completed, so there is no CSV to write.")
    path = out / "sweep.csv"
    with path.open("w", newline="") as fh:
        write_sweep_csv(run_dirs, fh, args.loss, args.params)
    return path


def _json(grid: list[dict], notes: list[str], csv_path: Path | None) -> int:
    return print_json(
        {
            "runs": [
                {
                    "name": pt["name"],
                    "budget": pt["budget"],
                    "action": pt["action"],
                    "epochs_asked": pt["epochs"],
                    "placement": pt.get("placement"),
                    **pt["plan"].to_json(),
                }
                for pt in grid
            ],
            "notes": notes,
            "csv": str(csv_path) if csv_path else None,
        }
    )
