"""`oneepoch sweep`: train an IsoFLOP grid of model sizes (oneepoch.plan.sweep) and write the
scaling CSV (as `oneepoch scaling sweep-csv` prints it)."""

from __future__ import annotations

from pathlib import Path

from oneepoch.cliflags import add_config_flags, check_positive, print_json
from oneepoch.commands.scaling import add_sweep_csv_flags, write_sweep_csv
from oneepoch.errors import UserError

HELP = "train a grid of model sizes per compute budget and write the scaling CSV"
DESCRIPTION = """\
Train models of several sizes on the same compute budget (IsoFLOP), for one or more budgets,
then write DIR/sweep.csv for `oneepoch scaling fit`. Completed runs are skipped when the
sweep is run again; interrupted ones are resumed.
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
    s.add_argument("--data", required=True, metavar="DATA_DIR")
    s.add_argument("--out", required=True, metavar="DIR", help="one run directory per grid point")
    add_config_flags(s, ["--seq-len", "--dtype", "--device", "--eval-tokens"])
    add_sweep_csv_flags(s)
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
    corpus = corpus_from_data(args.data)
    settings = Settings(seq_len=args.seq_len, eval_tokens=args.eval_tokens)
    calib = Calibration(args.device, args.dtype, measure=not args.no_calibrate)
    planner = Planner(corpus, settings, calib)
    try:
        grid, notes = build_grid(planner, budgets, sizes)
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
    if not args.json:
        print(
            f"{'run':<26}{'non-emb params':>15}{'tokens':>13}{'epochs':>8}{'steps':>8}"
            f"{'est. time':>11}  action"
        )
        for point in grid:
            p = point["plan"]
            print(
                f"{point['name']:<26}{p.candidate.non_embedding:>15,}{p.tokens:>13,}"
                f"{p.epochs:>8.2f}{p.steps:>8,}{format_seconds(p.estimate.elapsed_s):>11}  "
                f"{point['action']}"
            )
        total = sum(pt["plan"].estimate.elapsed_s for pt in todo)
        print(f"{len(todo)} runs to train, about {format_seconds(total)} in all")
        for line in notes + _too_few(grid):
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
        print(
            f"written: {csv_path}; fit it with "
            f"`oneepoch scaling fit --csv {csv_path} --json law.json`"
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


def _too_few(grid: list[dict]) -> list[str]:
    """A note when the grid's runs will be too few for `oneepoch scaling fit`."""
    runs = sum(1 for pt in grid if not pt["plan"].problem)
    need = scaling_fit_rows()
    if runs >= need:
        return []
    return [
        f"{runs} runs are fewer than the {need} rows `oneepoch scaling fit` needs for its "
        "five terms: add budgets or sizes (--sizes)"
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
                    **pt["plan"].to_json(),
                }
                for pt in grid
            ],
            "notes": notes + _too_few(grid),
            "csv": str(csv_path) if csv_path else None,
        }
    )
