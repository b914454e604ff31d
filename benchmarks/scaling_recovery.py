"""Scaling-law recovery benchmark: does the data-constrained fit find the law that made the data?

Each seed draws a data-constrained law and a design (oneepoch.analysis.synthetic's
REPETITION_FAMILY, each factor independently):

- exponents: alpha = beta in {0.28, 0.35, 0.5}, or (alpha, beta) = (0.3, 0.45), (0.45, 0.3);
- R_D*: 5, 15, 40; R_N*: 2, 5, 20;
- grid: ``wide`` (six sizes 2e7-1e9, 5-80 tokens per parameter, 1-64 epochs: 210 runs),
  ``sweep`` (`oneepoch sweep --budget 5e11,1e12,2e12 --epochs` on the built-in corpus:
  five sizes 12.8k-400k, 1, 4 and 16 epochs: 45 runs),
  ``small`` (three sizes, 10-40 tokens per parameter, 1, 4 and 16 epochs: 27 runs);
- log-normal noise: 0.2, 0.5, 1.5%;
- E uniform in [1.5, 3.5], A and B giving each term 20-80% of E at the design's median.

Both procedures (`oneepoch scaling fit --form data-constrained --procedure paper|joint`) are
run on each, as fit_scaling, with the bootstrap. Printed per family (each level of each
factor) and overall, per procedure:

- fail: the fit refused the data (a one-sentence error), share of seeds;
- worse: the optimiser ended above the generating law's own objective on the same rows
  (more than 0.01%); for the paper's procedure, either step: its base fit on the
  single-epoch rows against the truth there, or its R_D*, R_N* step against the true
  R_D*, R_N* with the fitted base;
- cov: coverage of the 90% interval of each estimated parameter (pooled), of R_D* and of
  R_N*, over the intervals given: a parameter at a bound (not identified) has none;
- n/i R_D*: R_D* not identified (at a bound), share;
- |log err| R_D*, R_N*: median |log(estimate / truth)|.

    python benchmarks/scaling_recovery.py [--seeds 0:200] [--bootstrap 200] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np

PROCEDURES = ("paper", "joint")


def truth_theta(form, law: dict) -> np.ndarray:
    """The generating law as internal parameters of ``form`` (a DataConstrainedForm)."""
    return np.array(
        [
            math.log(law["E"]),
            math.log(law["A"]) - law["alpha"] * form.log_n_ref,
            math.log(law["B"]) - law["beta"] * form.log_d_ref,
            law["alpha"],
            law["beta"],
            math.log(law["R_D_star"]),
            math.log(law["R_N_star"]),
        ]
    )


def objective_gaps(fit, law: dict) -> dict:
    """The fit's objective(s) against the generating law's on the same rows."""
    from oneepoch.analysis import robust

    form, data = fit.form, fit.data
    truth = truth_theta(form, law)
    logy = np.log(data["L"])
    model = form.model(data["N"], data["D"], data["U"])
    if fit.procedure == "joint":
        at_truth = robust.objective(model, truth, logy, fit.delta)[0]
        return {"objective_ratio": fit.objective / at_truth}
    single = data["U"] >= data["D"] * (1 - 1e-9)
    base_model = form.model(data["N"][single], data["D"][single], data["U"][single])
    base_truth = robust.objective(base_model, truth, logy[single], fit.delta)[0]
    with_base = np.concatenate([fit.theta[:5], truth[5:]])
    step_truth = robust.objective(model, with_base, logy, fit.delta)[0]
    return {
        "objective_ratio": max(fit.base["objective"] / base_truth, fit.objective / step_truth),
        "base_objective_ratio": fit.base["objective"] / base_truth,
        "step_objective_ratio": fit.objective / step_truth,
    }


def measure(seed: int, procedure: str, n_boot: int) -> dict:
    from oneepoch.analysis.scaling import fit_scaling
    from oneepoch.analysis.synthetic import draw_repetition_law, repetition_rows
    from oneepoch.errors import UserError

    spec = draw_repetition_law(seed)
    law = spec["law"]
    data = repetition_rows(law, spec["grid"], spec["noise"], seed)
    row = {**{k: v for k, v in spec.items() if k != "law"}, "law": law, "procedure": procedure}
    start = time.perf_counter()
    try:
        fit = fit_scaling(data, "data-constrained", procedure=procedure, n_boot=n_boot, seed=seed)
    except UserError as exc:
        return {**row, "error": str(exc), "seconds": time.perf_counter() - start}
    seconds = time.perf_counter() - start
    params = fit.params()
    covered = {}
    for name in fit.estimated_names():
        est = params[name]
        if "note" in est:  # at a bound: no interval, counted under n/i
            continue
        low = -np.inf if est["ci_low"] is None else est["ci_low"]
        high = np.inf if est["ci_high"] is None else est["ci_high"]
        covered[name] = bool(low <= law[name] <= high)
    inside = all(
        (params[n]["ci_low"] is None or params[n]["ci_low"] <= params[n]["value"])
        and (params[n]["ci_high"] is None or params[n]["value"] <= params[n]["ci_high"])
        for n in fit.estimated_names()
    )
    return {
        **row,
        **objective_gaps(fit, law),
        "covered": covered,
        "point_inside": inside,
        "not_identified": fit.at_bound(),
        "log_error": {
            k: math.log(params[k]["value"] / law[k]) for k in ("R_D_star", "R_N_star", "alpha")
        },
        "warnings": fit.warnings(),
        "seconds": seconds,
    }


def summary(rows: list[dict]) -> str:
    ok = [r for r in rows if "error" not in r]
    fail = 1 - len(ok) / len(rows)
    if not ok:
        return f"{len(rows):>4} {fail:>6.0%}"
    worse = np.mean([r["objective_ratio"] > 1 + 1e-4 for r in ok])
    pooled = np.mean([c for r in ok for c in r["covered"].values()])
    cov_rd = _mean([r["covered"]["R_D_star"] for r in ok if "R_D_star" in r["covered"]])
    cov_rn = _mean([r["covered"]["R_N_star"] for r in ok if "R_N_star" in r["covered"]])
    ni_rd = np.mean(["R_D_star" in r["not_identified"] for r in ok])
    err_rd = np.median([abs(r["log_error"]["R_D_star"]) for r in ok])
    err_rn = np.median([abs(r["log_error"]["R_N_star"]) for r in ok])
    return (
        f"{len(rows):>4} {fail:>6.0%} {worse:>6.0%} {pooled:>6.0%} {cov_rd:>7.0%} "
        f"{cov_rn:>7.0%} {ni_rd:>7.0%} {err_rd:>8.2f} {err_rn:>8.2f}"
    )


def _mean(values: list) -> float:
    return float(np.mean(values)) if values else float("nan")


def main(argv=None) -> int:
    from oneepoch.analysis.synthetic import REPETITION_FAMILY

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0:200", help="synthetic seeds START:END (default 0:200)")
    p.add_argument("--bootstrap", type=int, default=200)
    p.add_argument("--procedures", default=",".join(PROCEDURES))
    p.add_argument("--json", metavar="OUT", help="also write every result here")
    args = p.parse_args(argv)
    first, last = (int(v) for v in args.seeds.split(":"))
    procedures = [x for x in args.procedures.split(",") if x]
    unknown = [x for x in procedures if x not in PROCEDURES]
    if unknown:
        p.error(f"unknown procedure {unknown[0]}; choose from {', '.join(PROCEDURES)}")

    rows = [
        measure(seed, proc, args.bootstrap) for seed in range(first, last) for proc in procedures
    ]

    print(
        f"data-constrained law recovery: seeds {first}-{last - 1}, {args.bootstrap} bootstrap "
        "replicates, 90% intervals"
    )
    for proc in procedures:
        mine = [r for r in rows if r["procedure"] == proc]
        print(f"\n--procedure {proc}")
        print(
            f"{'family':<22} {'n':>4} {'fail':>6} {'worse':>6} {'cov':>6} {'cov R_D':>7} "
            f"{'cov R_N':>7} {'n/i R_D':>7} {'err R_D':>8} {'err R_N':>8}"
        )
        for name, levels in REPETITION_FAMILY.items():
            for level in levels:
                group = [r for r in mine if r[name] == level]
                if group:
                    print(f"{f'{name}={level}':<22} {summary(group)}")
        print(f"{'overall':<22} {summary(mine)}")
        ok = [r for r in mine if "error" not in r]
        outside = sum(not r["point_inside"] for r in ok)
        seconds = [r["seconds"] for r in mine]
        print(
            f"point estimate outside its interval: {outside} of {len(ok)} fits; a fit took "
            f"{np.median(seconds):.1f} s median, {np.max(seconds):.1f} s max"
        )
    print(
        "\nfail: refused the data; worse: ended above the true law's objective; cov: 90% "
        "interval coverage (all estimated parameters pooled, R_D*, R_N*); n/i: not "
        "identified (at a bound); err: median |log(estimate / truth)|"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(rows, fh, indent=1, default=float)
            fh.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
