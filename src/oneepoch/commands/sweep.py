"""`oneepoch sweep`: train an IsoFLOP grid of model sizes (oneepoch.plan.sweep) and write the
scaling CSV (as `oneepoch scaling sweep-csv` prints it)."""

from __future__ import annotations

from pathlib import Path

from oneepoch.cliflags import add_config_flags, check_positive, print_json
from oneepoch.commands.scaling import add_sweep_csv_flags, write_sweep_csv
from oneepoch.errors import UserError
from oneepoch.plan.sweep import DEFAULT_EPOCHS

HELP = "train a grid of model sizes per compute budget and write the scaling CSV"
DESCRIPTION = """\
Train models of several sizes on the same compute budget (IsoFLOP), for one or more budgets,
then write DIR/sweep.csv for `oneepoch scaling fit`. With --epochs, every size is trained once
per epoch count on the same tokens, drawn from fewer unique tokens: a repetition grid for
`oneepoch scaling fit --form data-constrained`. Completed runs are skipped when the sweep is
run again; interrupted ones are resumed.
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
    s.add_argument("--dry-run", action="store_true", help="print the grid, train nothing")
    s.add_argument("--no-calibrate", action="store_true", help="measure no throughput")
    s.add_argument("--quiet", action="store_true", help="no training progress display")
    s.add_argument("--json", action="store_true", help="print the grid and results as JSON")


def _split(values: list[str]) -> list[str]:
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def _status(run_dir: Path) -> str | None:
    import json

    try:
        return json.loads((run_dir / "run.json").read_text()).get("status")
    except (OSError, ValueError):
        return None


def run(args) -> int:
    from oneepoch.plan.budget import format_seconds, parse_budget
    from oneepoch.plan.calibrate import Calibration
    from oneepoch.plan.planfile import run_config
    from oneepoch.plan.planner import Planner, Settings, corpus_from_data
    from oneepoch.plan.sweep import build_grid
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
    corpus = corpus_from_data(args.data)
    settings = Settings(seq_len=args.seq_len, eval_tokens=args.eval_tokens)
    calib = Calibration(args.device, args.dtype, measure=not args.no_calibrate)
    planner = Planner(corpus, settings, calib)
    try:
        grid, notes = build_grid(planner, budgets, sizes, epochs)
    finally:
        calib.close()  # measuring is over before training starts
    out = Path(args.out)

    todo = []
    for point in grid:
        plan, run_dir = point["plan"], out / point["name"]
        status = _status(run_dir)
        if plan.problem:
            point["action"] = "skip: " + plan.problem
        elif status == "completed":
            point["action"] = "done"
        else:
            point["action"] = "resume" if (run_dir / "config.toml").is_file() else "train"
            todo.append(point)
    notes += _too_few(grid, epochs)
    if epochs and not args.json:
        print("checking that the grid can identify R_D* (simulated trial laws)...", flush=True)
    if epochs:
        notes += _identifies_r_d(grid)
    if not args.json:
        width = max([26] + [len(pt["name"]) + 2 for pt in grid])
        print(
            f"{'run':<{width}}{'non-emb params':>15}{'tokens':>13}{'unique':>13}{'epochs':>8}"
            f"{'steps':>8}{'est. time':>11}  action"
        )
        for point in grid:
            p = point["plan"]
            print(
                f"{point['name']:<{width}}{p.candidate.non_embedding:>15,}{p.tokens:>13,}"
                f"{p.unique_tokens:>13,}{p.epochs:>8.2f}{p.steps:>8,}"
                f"{format_seconds(p.estimate.elapsed_s):>11}  {point['action']}"
            )
        total = sum(pt["plan"].estimate.elapsed_s for pt in todo)
        print(f"{len(todo)} runs to train, about {format_seconds(total)} in all")
        for line in notes:
            print(f"note: {line}")
    if args.dry_run:
        return _json(grid, notes, None) if args.json else 0

    from oneepoch.commands.train import interrupted_exit
    from oneepoch.train import Interrupted, train

    for point in todo:
        cfg = run_config(point["plan"], corpus, settings, calib)
        run_dir = out / point["name"]
        try:
            train(cfg, run_dir, resume=point["action"] == "resume", show_progress=not args.quiet)
        except Interrupted as exc:
            return interrupted_exit(exc)
        point["action"] = "trained"

    done = [out / pt["name"] for pt in grid if _status(out / pt["name"]) == "completed"]
    csv_path = write_csv(out, done, args)
    if args.json:
        return _json(grid, notes, csv_path)
    if len(done) >= scaling_fit_rows():
        form = " --form data-constrained" if epochs else ""
        print(
            f"written: {csv_path}; fit it with "
            f"`oneepoch scaling fit --csv {csv_path}{form} --json law.json`"
        )
    else:
        print(
            f"written: {csv_path} ({len(done)} rows, fewer than the {scaling_fit_rows()} "
            "`oneepoch scaling fit` needs)"
        )
    return 0


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
                    **pt["plan"].to_json(),
                }
                for pt in grid
            ],
            "notes": notes,
            "csv": str(csv_path) if csv_path else None,
        }
    )
