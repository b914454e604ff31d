"""Forecast weighting rules compared on the same fits (issue 21's harness).

`benchmarks/forecast.py` refits every curve for every rule. This script fits each synthetic
curve of that benchmark once (`fit_run` from the first 30%, as the benchmark does) and keeps,
per form, its point forecast of the final loss, its bootstrap replicates there and its
backtested drift rate, plus the oracle's error; a rule that only re-weighs the forms can then
be evaluated on the same fits in seconds. The rule in place ("now") reproduces the benchmark's
forecasts exactly. Rules compared: now, and the floor-free form's backtest weight cut by its
profile likelihood against the best floor at temperatures 1, 2 and 4 (docs/analysis.md: tried,
not adopted). Printed per rule: median, p90 and signed error, coverage, median width, the
families over 1.25x the oracle, with signed error beyond +-0.5% and with coverage outside
85-95%, how many of those misses lie beyond the noise of the family's curves (MISSED:
forecast_targets.py), the mean interval score (width + 20 x the miss, relative) and the
RMS log error.

    python benchmarks/forecast_rules.py --seeds 1000:2000 --fits fits.jsonl   # fit, then compare
    python benchmarks/forecast_rules.py --fits fits.jsonl --no-fit [--families]  # compare only
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
from forecast import FACTORS, STEPS, draw_curve, oracle, true_loss, write_curve
from forecast_targets import family_targets

AVG, NOFLOOR, FREE = "schedule-avgfloor", "schedule-nofloor", "schedule"


def fit_curves(first: int, last: int, out: Path) -> None:
    """Append one line per seed to ``out``: the curve, the truth, every form's forecast."""
    from oneepoch.analysis import robust
    from oneepoch.analysis.runfit import fit_run
    from oneepoch.analysis.runs import load_run
    from oneepoch.errors import UserError

    with tempfile.TemporaryDirectory() as tmp, out.open("a") as fh:
        for seed in range(first, last):
            curve = draw_curve(seed)
            run = load_run(write_curve(curve, Path(tmp) / f"s{seed}"))
            truth = float(true_loss(curve, [STEPS])[0])
            try:
                rf = fit_run(run, use_first=0.3, n_boot=200)
            except UserError as exc:
                fh.write(json.dumps({"seed": seed, "skipped": str(exc)}) + "\n")
                continue
            at = run.final_tokens
            forms = {}
            for name, fit in rf.fits.items():
                log_resid = np.log(fit.loss) - np.log(fit.predict(fit.x))
                forms[name] = {
                    "point": float(fit.predict([at])[0]),
                    "samples": [round(float(v), 6) for v in fit.predict_samples([at])[:, 0]],
                    "rate": rf.settings["backtest"][name]["log_error_per_log_distance"],
                    "df": fit.interval_df,
                    "level": fit.level,
                    "rss": float(np.sum(log_resid**2)),
                    "n": int(fit.x.size),
                    "n_free": fit.n_free,
                }
                if fit.mixture is not None:  # the floor-averaged form: each held floor's RSS
                    thetas, _ = fit.mixture
                    logs = robust.log_pred(fit.form.model(fit.x), thetas)
                    rss = np.sum((np.log(fit.loss)[None] - logs) ** 2, axis=1)
                    forms[name]["floor_rss"] = [float(v) for v in rss]
            forecast = rf.predict_at(at)["forecast"]
            row = {
                **curve,
                "truth": truth,
                "rule_error": forecast["value"] / truth - 1,
                "forms": forms,
                **oracle(curve, truth, 0.3, 200, rf),
            }
            fh.write(json.dumps(row) + "\n")
            fh.flush()


def weights_now(row: dict) -> dict[str, float]:
    """The rule in place under a constant LR (runfit.RunFit.forecast_weights)."""
    from oneepoch.analysis.runfit import _inverse_square_weights

    rates = {n: row["forms"][n]["rate"] for n in (AVG, NOFLOOR) if n in row["forms"]}
    if None in rates.values():
        return {AVG: 1.0}
    return _inverse_square_weights(rates)


def weights_likelihood_cut(row: dict, temperature: float) -> dict[str, float]:
    """The floor-free form's weight times its profile likelihood against the best floor."""
    weights, forms = weights_now(row), row["forms"]
    if NOFLOOR not in weights:
        return weights
    avg = forms[AVG]
    best = min(min(avg["floor_rss"]), forms[FREE]["rss"] if FREE in forms else np.inf)
    s2 = max(best / max(avg["n"] - avg["n_free"], 1), 1e-12)
    factor = np.exp(-(forms[NOFLOOR]["rss"] - best) / (2 * s2 * temperature))
    cut = {AVG: weights[AVG], NOFLOOR: weights[NOFLOOR] * factor}
    total = sum(cut.values())
    return {n: w / total for n, w in cut.items()}


def forecast(row: dict, weights: dict[str, float]) -> tuple[float, float, float]:
    """(point, low, high) of the forms mixed by ``weights``, as RunFit._forecast mixes them."""
    from oneepoch.analysis import robust
    from oneepoch.analysis.runfit import _split_count

    names = [n for n, w in sorted(weights.items(), key=lambda kv: -kv[1]) if w > 0]
    forms = row["forms"]
    log_point = sum(weights[n] * np.log(forms[n]["point"]) for n in names)
    n_boot = min(len(forms[n]["samples"]) for n in names)
    counts = _split_count(n_boot, [weights[n] for n in names])
    samples = np.concatenate([np.asarray(forms[n]["samples"][:k]) for n, k in zip(names, counts)])
    first = forms[names[0]]
    est = robust.estimate(float(np.exp(log_point)), samples, first["level"], first["df"])
    return est["value"], est["ci_low"], est["ci_high"]


def evaluate(rows: list[dict], rule) -> list[dict]:
    out = []
    for row in rows:
        point, low, high = forecast(row, rule(row))
        truth = row["truth"]
        miss = max(low - truth, 0.0) + max(truth - high, 0.0)
        out.append(
            {
                **{factor: row[factor] for factor in FACTORS},
                "error": point / truth - 1,
                "covered": low <= truth <= high,
                "width": (high - low) / truth,
                "score": (high - low + 20 * miss) / truth,
                "oracle_error": row["oracle_error"],
            }
        )
    return out


def summary(results: list[dict], label: str, families: bool) -> str:
    err = np.array([r["error"] for r in results])
    lines, counts = [], {"rule/oracle": 0, "signed": 0, "coverage": 0, "MISSED": 0}
    for factor, levels in FACTORS.items():
        for level in levels:
            group = [r for r in results if r[factor] == level]
            if not group:
                continue
            e = np.array([r["error"] for r in group])
            ratio, signed, coverage = family_targets(
                e, [r["covered"] for r in group], [r["oracle_error"] for r in group]
            )
            for judged in (ratio, signed, coverage):
                counts[judged.target] += judged.verdict != "met"
                counts["MISSED"] += judged.verdict == "MISSED"
            lines.append(
                f"  {f'{factor}={level}':<18}{len(group):5d} {np.median(np.abs(e)):7.2%} "
                f"{ratio.estimate:5.2f}x {signed.estimate:+7.2%} {coverage.estimate:6.1%}"
            )
    head = (
        f"{label:<26} {np.median(np.abs(err)):6.2%} {np.quantile(np.abs(err), 0.9):6.2%} "
        f"{np.median(err):+7.2%} {np.mean([r['covered'] for r in results]):6.1%} "
        f"{np.median([r['width'] for r in results]):6.2%} {counts['rule/oracle']:4d} "
        f"{counts['signed']:6d} {counts['coverage']:7d} {counts['MISSED']:6d} "
        f"{np.mean([r['score'] for r in results]):7.4f} {np.sqrt(np.mean(np.log1p(err) ** 2)):7.4f}"
    )
    return "\n".join([head, *lines] if families else [head])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="1000:1200", help="synthetic seeds START:END to fit")
    p.add_argument("--fits", type=Path, required=True, help="JSON lines of the fits (appended)")
    p.add_argument("--no-fit", action="store_true", help="compare rules on --fits as it is")
    p.add_argument("--families", action="store_true", help="also print each family's line")
    args = p.parse_args(argv)
    if not args.no_fit:
        first, last = (int(v) for v in args.seeds.split(":"))
        fit_curves(first, last, args.fits)
    rows = [row for row in map(json.loads, args.fits.open()) if "forms" in row]
    now = evaluate(rows, weights_now)
    drift = max(abs(r["error"] - row["rule_error"]) for r, row in zip(now, rows))
    print(f"{len(rows)} curves; the rule now reproduces the forecasts within {drift:.1e}")
    print(
        f"{'rule':<26} {'med':>6} {'p90':>6} {'signed':>7} {'cover':>6} {'width':>6} "
        f"{'over':>4} {'signed':>6} {'outside':>7} {'MISSED':>6} {'score':>7} {'rms':>7}"
    )
    print(summary(now, "now", args.families))
    for temperature in (1.0, 2.0, 4.0):
        results = evaluate(rows, partial(weights_likelihood_cut, temperature=temperature))
        print(summary(results, f"likelihood cut, T = {temperature:g}", args.families))
    return 0


if __name__ == "__main__":
    sys.exit(main())
