"""`oneepoch scaling fit` and `oneepoch scaling sweep-csv`: scaling laws across runs
(oneepoch.analysis.scaling)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

from oneepoch.analysis.format import format_param
from oneepoch.cliflags import (
    add_sweep_csv_flags,
    add_uncertainty_flags,
    check_output_files,
    check_positive,
    check_uncertainty_flags,
    json_text,
    needs_subcommand,
)
from oneepoch.errors import UserError

HELP = "fit L(N, D[, U]) across runs; build the CSV from run directories"
DESCRIPTION = "Scaling-law fits (Chinchilla, data-constrained) with bootstrap intervals."


def add_arguments(p) -> None:
    actions = p.add_subparsers(dest="scaling_action", metavar="ACTION")
    needs_subcommand(p)

    f = actions.add_parser("fit", help="fit a scaling law to a CSV")
    f.add_argument("--csv", required=True, metavar="FILE", help="columns params, tokens, loss")
    f.add_argument("--json", required=True, metavar="OUT", help="write the law here ('-': stdout)")
    f.add_argument("--form", choices=("chinchilla", "data-constrained"), default="chinchilla")
    f.add_argument("--plot", metavar="FILE.png", help="write IsoFLOP curves with the fitted law")
    f.add_argument("--params-col", default="params")
    f.add_argument("--tokens-col", default="tokens")
    f.add_argument("--loss-col", default="loss")
    f.add_argument(
        "--unique-col",
        default="unique_tokens",
        help="unique tokens column, used by the data-constrained form",
    )
    f.add_argument("--huber-delta", type=float, default=1e-3)
    f.add_argument(
        "--procedure",
        choices=("paper", "joint"),
        default="paper",
        help="data-constrained only: paper (default; Muennighoff et al.: Chinchilla terms "
        "fixed from --base or the single-epoch rows, then R_D*, R_N* alone) or joint (all "
        "seven parameters at once)",
    )
    f.add_argument(
        "--base",
        metavar="LAW.json",
        help="a chinchilla law (from `scaling fit --form chinchilla`) whose terms the paper's "
        "data-constrained procedure holds fixed",
    )
    f.add_argument(
        "--tie",
        choices=("alpha=beta",),
        help="fit the Chinchilla terms with beta tied to alpha, as Muennighoff et al. did",
    )
    f.add_argument(
        "--drop-highest",
        type=int,
        default=0,
        metavar="K",
        help="outlier policy: drop the K highest-loss rows before fitting",
    )
    f.add_argument(
        "--drop-above",
        type=float,
        metavar="LOSS",
        help="outlier policy: drop rows with a loss above LOSS before fitting",
    )
    add_uncertainty_flags(f)
    f.set_defaults(func=run_fit)

    s = actions.add_parser("sweep-csv", help="print a scaling CSV built from run directories")
    s.add_argument("runs", nargs="+", metavar="RUN_DIR")
    add_sweep_csv_flags(s)
    s.set_defaults(func=run_sweep_csv)


def run_fit(args) -> int:
    from oneepoch.analysis.scaling import fit_scaling, load_law, read_csv

    check_uncertainty_flags(args)
    check_output_files(args.json, plot=args.plot, inputs=(args.csv, args.base))
    check_positive(huber_delta=args.huber_delta)
    if args.drop_above is not None and not math.isfinite(args.drop_above):
        raise UserError(f"--drop-above must be a finite loss, not {args.drop_above}.")
    data, columns = read_csv(
        args.csv,
        params_col=args.params_col,
        tokens_col=args.tokens_col,
        loss_col=args.loss_col,
        unique_col=args.unique_col if args.form == "data-constrained" else None,
    )
    base = None
    if args.base is not None:
        base = load_law(args.base)
        if base.form != "chinchilla":
            raise UserError(
                f"{args.base} holds a {base.form} law; --base needs a chinchilla one "
                "(`oneepoch scaling fit --form chinchilla`)."
            )
        if args.form != "data-constrained":
            raise UserError("--base belongs to --form data-constrained; drop it.")
    fit = fit_scaling(
        data,
        args.form,
        n_boot=args.bootstrap,
        level=args.level,
        seed=args.seed,
        delta=args.huber_delta,
        columns=columns,
        procedure=args.procedure,
        base=base,
        base_source=args.base,
        tie=args.tie is not None,
        drop_highest=args.drop_highest,
        drop_above=args.drop_above,
    )
    result = fit.to_json()
    text = json_text(result)
    if args.json == "-":
        print(text)
    else:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    if args.plot:
        from oneepoch.analysis.plots import plot_isoflops

        plot_isoflops(fit, args.plot)
    if args.json != "-":
        print(
            f"{result['form']}: {result['formula']}  ({result['n_points']} points, "
            f"{result['n_bootstrap']} bootstrap replicates, {args.level:.0%} intervals)"
        )
        if "procedure" in result:
            base = result.get("base")
            print(f"  procedure: {result['procedure']}" + _base_text(base))
        print(
            f"  outliers: {result['outliers']['policy']}, {len(result['outliers']['dropped_lines'])} rows dropped"
        )
        for name in fit.form.param_names:
            print(format_param(name, result[name]))
        for line in result["warnings"]:
            print(f"  warning: {line}")
        print(format_param("N_opt ~ C^a", result["N_opt_exponent"]))
        print(format_param("D_opt ~ C^b", result["D_opt_exponent"]))
        print(
            format_param("D/N at C", result["tokens_per_param"])
            + f"  (C = {result['tokens_per_param_at_flops']:.3g} FLOPs)"
        )
        print(f"written: {args.json}" + (f", {args.plot}" if args.plot else ""))
    return 0


def _base_text(base: dict | None) -> str:
    """Where the paper procedure's Chinchilla terms came from, and which CSV lines."""
    if not base:
        return ""
    if "rows" not in base:
        return f" (Chinchilla terms fixed from {base['source']})"
    lines = base["rows"]
    shown = ", ".join(str(x) for x in lines[:12]) + (", ..." if len(lines) > 12 else "")
    return f" (Chinchilla terms from {base['source']}: {len(lines)} rows, CSV lines {shown})"


def run_sweep_csv(args) -> int:
    from oneepoch.analysis.scaling import write_sweep_csv

    write_sweep_csv(args.runs, sys.stdout, args.loss, args.params)
    return 0
