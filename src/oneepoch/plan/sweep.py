"""``oneepoch sweep``: a grid of model sizes under one or more compute budgets (IsoFLOP).

Every run of a budget spends the same training FLOPs (C / FLOPs per token of its shape is
its token count), so the curve of final loss against size shows the compute-optimal size,
and the CSV written at the end (one row per run: run, params, tokens, unique_tokens, loss,
flops, wall_s, built by the analysis package's ``sweep_rows``) is what `oneepoch scaling fit`
reads. Shapes are the nearest to each size in non-embedding parameters, not the fastest: a
grid is easier to read when its shapes follow one family. Batch size and learning rate
follow the planner's heuristics. Rerunning skips completed runs and resumes unfinished ones.
"""

from __future__ import annotations

from pathlib import Path

from oneepoch.cliflags import add_config_flags, print_json
from oneepoch.errors import UserError

SIZE_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)


def register_sweep(subparsers) -> None:
    s = subparsers.add_parser(
        "sweep",
        help="train a grid of model sizes per compute budget and write the scaling CSV",
        description="Train models of several sizes on the same compute budget (IsoFLOP), for "
        "one or more budgets, then write DIR/sweep.csv for `oneepoch scaling fit`. Completed "
        "runs are skipped when the sweep is run again; interrupted ones are resumed.",
    )
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
    add_sweep_csv_options(s)
    s.add_argument("--dry-run", action="store_true", help="print the grid, train nothing")
    s.add_argument("--no-calibrate", action="store_true", help="measure no throughput")
    s.add_argument("--quiet", action="store_true", help="no training progress display")
    s.add_argument("--json", action="store_true", help="print the grid and results as JSON")
    s.set_defaults(func=run_sweep)


def _split(values: list[str]) -> list[str]:
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def build_grid(planner, budgets, sizes: list[int] | None) -> list[dict]:
    """Grid points {name, budget, flops, plan} (plan: a planner.RulePlan, maybe skipped)."""
    from oneepoch.plan.budget import Budget
    from oneepoch.plan.planner import RulePlan
    from oneepoch.plan.rules import Chinchilla
    from oneepoch.plan.shapes import near_equal

    grid, chinchilla = [], Chinchilla()
    for budget in budgets:
        if budget.kind == "tokens":
            raise UserError(
                f"sweep budgets are compute: give FLOPs (3e14) or a wall-clock time, not {budget.text!r}."
            )
        centre = planner.plan(chinchilla, budget)
        flops = budget.value if budget.kind == "flops" else centre.flops
        if budget.kind != "flops":
            centre = planner.plan(chinchilla, Budget("flops", flops, f"{flops:.3g}"))
        wanted = sizes or [centre.candidate.non_embedding * f for f in SIZE_FACTORS]
        seen = set()
        for n in wanted:
            cand = near_equal(n, "non_embedding", planner.T, planner.V)[0]
            if cand.shape in seen:
                continue
            seen.add(cand.shape)
            plan = RulePlan(
                "sweep", "IsoFLOP grid", "non_embedding", float(n), cand, budget_flops=flops
            )
            planner.finish(plan, chinchilla, flops / cand.flops_per_token)
            calib = planner.calib
            if (
                not plan.problem
                and calib.allow_measure
                and not calib.has(cand.shape, plan.batch_size)
            ):
                calib.measure(cand.shape, plan.batch_size)
                plan.notes.clear()
                planner.finish(plan, chinchilla, flops / cand.flops_per_token)
            s = cand.shape
            name = f"C{flops:.2e}".replace("+", "") + f"/L{s.n_layer}-d{s.d_model}"
            grid.append({"name": name, "budget": budget.text, "flops": flops, "plan": plan})
    return grid


def _status(run_dir: Path) -> str | None:
    import json

    try:
        return json.loads((run_dir / "run.json").read_text()).get("status")
    except (OSError, ValueError):
        return None


def run_sweep(args) -> int:
    from oneepoch.plan.budget import format_seconds, parse_budget
    from oneepoch.plan.calibrate import Calibration
    from oneepoch.plan.planfile import run_config
    from oneepoch.plan.planner import Planner, Settings, corpus_from_data
    from oneepoch.units import parse_count

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
    grid = build_grid(planner, budgets, sizes)
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
    if args.dry_run:
        if args.json:
            _json(grid, None)
        return 0

    from oneepoch.train import Interrupted, train
    from oneepoch.train_cli import interrupted_exit

    for point in todo:
        cfg = run_config(point["plan"], corpus, settings, calib)
        run_dir = out / point["name"]
        try:
            train(cfg, run_dir, resume=point["action"] == "resume", show_progress=not args.quiet)
        except Interrupted as exc:
            return interrupted_exit(exc)
        point["action"] = "trained"

    csv_path = write_csv(
        out, [out / pt["name"] for pt in grid if _status(out / pt["name"]) == "completed"], args
    )
    if args.json:
        _json(grid, csv_path)
    else:
        print(f"written: {csv_path}; fit it with `oneepoch scaling fit --csv {csv_path}`")
    return 0


def sweep_csv_command():
    """The parser of `oneepoch scaling sweep-csv`, which the sweep's CSV is written by."""
    import argparse

    from oneepoch.analysis import cli as analysis_cli

    root = argparse.ArgumentParser(add_help=False)
    commands = root.add_subparsers()
    analysis_cli.register(commands)
    scaling = commands.choices["scaling"]
    (actions,) = [a for a in scaling._actions if isinstance(a, argparse._SubParsersAction)]
    return actions.choices["sweep-csv"]


def add_sweep_csv_options(parser) -> None:
    """--loss and --params, exactly as `oneepoch scaling sweep-csv` declares them."""
    for action in sweep_csv_command()._actions:
        if action.dest in ("loss", "params"):
            parser._add_action(action)


def write_csv(out: Path, run_dirs: list[Path], args) -> Path:
    """out/sweep.csv, as `oneepoch scaling sweep-csv RUN_DIR... --loss --params` prints it."""
    import contextlib

    if not run_dirs:
        raise UserError("no run of the sweep completed, so there is no CSV to write.")
    argv = [*map(str, run_dirs), "--loss", args.loss, "--params", args.params]
    command = sweep_csv_command().parse_args(argv)
    path = out / "sweep.csv"
    with path.open("w", newline="") as fh, contextlib.redirect_stdout(fh):
        command.func(command)
    return path


def _json(grid: list[dict], csv_path: Path | None) -> None:
    print_json(
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
            "csv": str(csv_path) if csv_path else None,
        }
    )
