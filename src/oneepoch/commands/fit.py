"""`oneepoch fit`: learning-curve laws fitted to runs (oneepoch.analysis), with intervals and
extrapolation.

Only argparse and the standard library are imported here; numpy, scipy and matplotlib
load when the command runs, so `oneepoch --help` stays fast.
"""

from __future__ import annotations

import math
import sys

from oneepoch.analysis.format import format_estimate, format_number, format_param
from oneepoch.cliflags import (
    add_output_flags,
    add_uncertainty_flags,
    check_output_files,
    check_positive,
    check_uncertainty_flags,
    print_json,
)
from oneepoch.errors import UserError


def _predict_at(text: str | None) -> float | str | None:
    """--predict-at: a count (2e6, 2M) or ``final``, the run's own final tokens (or steps)."""
    from oneepoch.units import parse_count

    if text is None:
        return None
    if text.strip().lower() == "final":
        return "final"
    return float(parse_count(text, "--predict-at value"))


HELP = "fit learning-curve laws to runs, with intervals and extrapolation"
DESCRIPTION = """\
Fit each run's validation curve with L = E + A t^-alpha and the schedule-aware law of Tissue
et al. (2024), each also without its floor; report intervals, goodness of fit, the range
where each law holds, which form predicts held-out tail points best, and which form to trust
for a prediction.
"""


def add_arguments(p) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    add_output_flags(p, "the results")
    p.add_argument("--plot", metavar="FILE.png", help="write loss vs tokens and wall-clock")
    p.add_argument(
        "--x", choices=("tokens", "steps"), default="tokens", help="what t counts (default tokens)"
    )
    p.add_argument(
        "--forms",
        help="comma-separated forms to fit: power, schedule, power-nofloor, schedule-nofloor "
        "(default: all; the schedule forms only when the run logs its learning rate)",
    )
    p.add_argument(
        "--predict-at",
        metavar="T",
        help="predict the loss at T (in --x units; 2e6 or 2M both work), or at `final`, the "
        "run's final tokens (steps with --x steps); with the error against the observed loss "
        "when the run got there",
    )
    p.add_argument(
        "--target-loss",
        type=float,
        metavar="X",
        help="predict the tokens, steps and wall-clock to reach loss X",
    )
    p.add_argument(
        "--use-first",
        type=float,
        metavar="FRACTION",
        help="fit only evaluations within this fraction of the run's tokens",
    )
    p.add_argument(
        "--min-step",
        type=float,
        metavar="STEP",
        help="fit evaluations after this step (default: the warmup steps)",
    )
    p.add_argument(
        "--tail-fraction",
        type=float,
        default=0.2,
        help="share of the last points held out to compare forms (default 0.2)",
    )
    p.add_argument(
        "--with",
        dest="with_runs",
        nargs="+",
        metavar="RUN",
        help="runs of the same setup (model, data) to fit the schedule-aware law jointly "
        "with, e.g. a short decay run, so its annealing term is measured; forecasts each "
        "RUN_DIR's final loss (or --predict-at) under its planned schedule",
    )
    p.add_argument(
        "--lr-decay-factor",
        type=float,
        default=0.999,
        help="decay factor lambda of the annealing momentum S2 (default 0.999)",
    )
    add_uncertainty_flags(p)


def run(args) -> int:
    from oneepoch.analysis.runfit import FORMS, fit_run
    from oneepoch.analysis.runs import load_run

    check_uncertainty_flags(args)
    forms = None
    if args.forms is not None:
        forms = tuple(f.strip() for f in args.forms.split(",") if f.strip())
        unknown = [f for f in forms if f not in FORMS]
        if unknown or not forms:
            raise UserError(f"--forms takes a comma-separated list of {', '.join(FORMS)}.")
    if not 0 < args.tail_fraction < 1:
        raise UserError(f"--tail-fraction must be between 0 and 1, not {args.tail_fraction}.")
    if not 0 < args.lr_decay_factor < 1:
        raise UserError(f"--lr-decay-factor must be between 0 and 1, not {args.lr_decay_factor}.")
    if args.min_step is not None and not (math.isfinite(args.min_step) and args.min_step >= 0):
        raise UserError(f"--min-step must be a step number, 0 or more, not {args.min_step}.")
    check_positive(target_loss=args.target_loss)
    args.predict_at = _predict_at(args.predict_at)
    if args.predict_at not in (None, "final") and not args.predict_at > 0:
        raise UserError(f"--predict-at must be positive, not {args.predict_at}.")

    check_output_files(plot=args.plot)
    results, extend_to = [], None
    for i, path in enumerate(args.runs):
        run = load_run(path)
        if run.dropped_evals:
            print(
                f"note: {run.dropped_evals} evaluations of {path} are left out: their val_loss "
                "is NaN, missing, infinite, zero or negative, which no cross-entropy is.",
                file=sys.stderr,
            )
        at = _final_x(run, args.x) if args.predict_at == "final" else args.predict_at
        if at is not None:
            extend_to = max(extend_to or 0.0, at)
        rf = fit_run(
            run,
            x=args.x,
            forms=forms,
            use_first=args.use_first,
            min_step=args.min_step,
            tail_fraction=args.tail_fraction,
            n_boot=args.bootstrap,
            level=args.level,
            seed=args.seed + i,
            decay=args.lr_decay_factor,
        )
        if at is not None:
            rf.predict_at(at)
        if args.target_loss is not None:
            rf.time_to_target(args.target_loss)
        if args.with_runs:
            from oneepoch.analysis.joint import fit_joint

            rf.predictions["joint"] = fit_joint(
                rf.run,
                [load_run(other) for other in args.with_runs],
                x=args.x,
                use_first=args.use_first,
                min_steps={str(rf.run.path): args.min_step} if args.min_step is not None else None,
                predict_at=at,
                n_boot=args.bootstrap,
                level=args.level,
                seed=args.seed + i,
                decay=args.lr_decay_factor,
            )
        results.append(rf)
    if args.plot:
        from oneepoch.analysis.plots import plot_run_fits

        plot_run_fits(results, args.plot, extend_to=extend_to)
    reports = [_annotate(rf.to_json()) for rf in results]
    if args.json:
        return print_json({"runs": reports})
    for r in reports:
        _print_run_fit(r)
    if args.plot:
        print(f"plot: {args.plot}")
    return 0


def _final_x(run, x: str) -> float:
    """The run's last logged tokens (or step, for --x steps): --predict-at final."""
    import numpy as np

    column = run.lines["step"] if x == "steps" else run.lines["tokens"]
    return float(np.nanmax(column))


AT_BOUND = "at bound: not identified"


def _annotate(r: dict) -> dict:
    """What the fit's numbers leave unsaid: a floor (E, L0) or exponent stuck at the edge
    of the fitting box is not a measurement (``note``: AT_BOUND), and a prediction where
    the run has an observed loss gets its relative error (``error``: predicted / observed
    - 1)."""
    from oneepoch.analysis.curves import _ALPHA, _NO_FLOOR

    edges = {"E": (_NO_FLOOR, None), "L0": (_NO_FLOOR, None), "alpha": _ALPHA}
    for form in r.get("forms", {}).values():
        for name, (low, high) in edges.items():
            est = form.get(name)
            if not isinstance(est, dict) or est.get("value") is None or "note" in est:
                continue
            v = est["value"]
            if v <= low * (1 + 1e-3) or (high is not None and v >= high * (1 - 1e-3)):
                est["note"] = AT_BOUND
    for fc in (r.get("predict_at", {}).get("forecast"), r.get("joint", {}).get("forecast")):
        if not fc:
            continue
        observed = fc.get("observed_loss")
        if observed is None and fc is r.get("predict_at", {}).get("forecast"):
            observed = r["predict_at"].get("observed_loss")
        if observed and fc.get("value") is not None:
            fc["error"] = fc["value"] / observed - 1
    return r


def _print_run_fit(r: dict) -> None:
    print(
        f"run {r['run']}: {r['n_fit_points']} of {r['n_eval_points']} evaluations fitted "
        f"(after step {r['min_step']:g}"
        + (f", first {r['use_first']:.0%} of tokens" if r["use_first"] else "")
        + f"), t = {r['x']}, {r['level']:.0%} intervals"
    )
    _print_forms(r)
    _print_tail_check(r["tail_check"])
    if "predict_at" in r:
        _print_prediction(r["predict_at"])
    if "joint" in r:
        _print_joint(r["joint"])
    if "target" in r:
        _print_target(r["target"])


def _print_forms(r: dict) -> None:
    """Each fitted form: its parameters, goodness of fit, valid range, notes."""
    for name, why in r["forms_left_out"].items():
        print(f"  {name}: left out, too few evaluations ({why})")
    for name, form in r["forms"].items():
        print(f"  {name}: {form['formula']}")
        for p in form["param_names"]:
            print("  " + format_param(p, form[p]))
        g, v = form["goodness"], form["valid_range"]
        print(
            f"    fit: rmse(log) {g['rmse_log']:.3g}, max error {g['max_abs_rel_error']:.2%}, "
            f"R^2 {format_number(g['r2'])}, residual lag-1 autocorrelation "
            f"{format_number(g['residual_lag1_autocorr'])}"
        )
        if v["n_points"]:
            print(
                f"    holds for t in [{v['t_min']:.4g}, {v['t_max']:.4g}] "
                f"({v['decades']:.2f} decades, {v['n_points']} points)"
            )
        for note in form["notes"]:
            print(f"    note: {note}")


def _print_tail_check(tail: dict) -> None:
    """How each form predicted the held-out last evaluations."""
    if tail.get("rmse_log"):
        scores = ", ".join(f"{k} {v:.3g}" for k, v in tail["rmse_log"].items())
        print(
            f"  held-out last {tail['n_holdout']} points, rmse(log): {scores} -> "
            f"{tail['better']} predicts better"
        )
    elif "skipped" in tail:
        print(f"  held-out tail check skipped: {tail['skipped']}")


def _print_prediction(pa: dict) -> None:
    """The loss at --predict-at: each form's, the forecast, and what was observed."""
    for name, est in pa["forms"].items():
        print(f"  loss at t = {pa['x']:.4g} ({name}): {format_estimate(est)}")
    print(f"  forecast: loss at t = {pa['x']:.4g}: {format_estimate(pa['forecast'])}{_how(pa)}")
    _print_evaluation(pa["forecast"])
    _print_forecast_lines(pa["forecast"])
    if pa["observed_loss"] is not None:
        print(
            f"  observed loss at t = {pa['x']:.4g}: {pa['observed_loss']:.4f}"
            + _error(pa["forecast"])
        )


def _print_evaluation(forecast: dict) -> None:
    """The interval one evaluation there falls in, and what widened the curve's."""
    evaluation = forecast["evaluation"]
    scatter, tail = evaluation["scatter"] or 0.0, evaluation.get("tail_error") or 0.0
    if scatter or tail:
        why = (
            f"the form's error on its held-out tail, {tail:.2%}"
            if tail > scatter
            else f"the evaluations' scatter, {scatter:.2%}"
        )
        print(
            f"  one evaluation there: {format_estimate(forecast | evaluation)} (the curve's "
            f"interval widened by {why})"
        )


def _print_joint(jt: dict) -> None:
    """The schedule-aware fit over several runs and its forecast."""
    fc = jt["forecast"]
    print(f"  joint schedule-aware fit over {', '.join(jt['runs'])}: {jt['formula']}")
    for name, est in jt["params"].items():
        print("  " + format_param(name, est))
    print(
        f"  forecast under the planned schedule: loss at t = {fc['x']:.4g}: {format_estimate(fc)}"
    )
    _print_evaluation(fc)
    if fc["observed_loss"] is not None:
        print(f"  observed loss at t = {fc['x']:.4g}: {fc['observed_loss']:.4f}" + _error(fc))
    for note in jt["notes"]:
        print(f"  note: {note}")


def _print_target(tg: dict) -> None:
    """When --target-loss is reached: by each form, by the forecast, and as observed."""
    for name, est in tg["forms"].items():
        if not est["reached"]:
            print(
                f"  loss {tg['loss']:g} ({name}): not reached by the fitted curve "
                f"(p_reach {est['p_reach']:.2f})"
            )
            continue
        print(f"  to reach loss {tg['loss']:g} ({name}): " + _costs(est))
    fc = tg["forecast"]
    if fc["reached"]:
        print(f"  forecast: to reach loss {tg['loss']:g}: " + _costs(fc) + _how(tg))
    else:
        print(f"  forecast: loss {tg['loss']:g} not reached{_how(tg)}")
    _print_forecast_lines(fc)
    if tg["observed"]:
        obs = tg["observed"]
        print(f"  observed: reached at tokens {obs['tokens']:.4g}, step {obs['steps']:.4g}")


def _costs(est: dict) -> str:
    """What reaching a loss costs: tokens, steps and seconds, each with its interval."""
    return ", ".join(
        f"{k} {format_estimate(est[k])}" for k in ("tokens", "steps", "wall_s") if k in est
    )


def _error(forecast: dict) -> str:
    err = forecast.get("error")
    return "" if err is None else f" (forecast error {err:+.2%})"


def _how(prediction: dict) -> str:
    weights = prediction["forecast"]["weights"]
    if len(weights) == 1:
        return f" ({next(iter(weights))})"
    parts = ", ".join(f"{name} {w:.2f}" for name, w in weights.items())
    return f" (weighed by backtests: {parts})"


def _print_forecast_lines(forecast: dict) -> None:
    for line in forecast["warnings"]:
        print(f"  warning: {line}")
    for line in forecast["notes"]:
        print(f"  note: {line}")
