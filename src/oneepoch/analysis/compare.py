"""Speedup of one run over another: the cost ratio for reaching the same validation loss.

The target is by default the best loss the worse run reached, so both runs reach it
without extrapolation. Each run's cost (wall-clock, steps, tokens, FLOPs) is read where
its eval curve first reaches the target, interpolating log-log between eval points. A run
that never reaches the target is extrapolated with its power-law fit, with a bootstrap
interval, and flagged.
"""

from __future__ import annotations

import numpy as np

from oneepoch.analysis import extrapolate, robust
from oneepoch.analysis.runfit import fit_run
from oneepoch.analysis.runs import Run

# cost axis -> name of the speedup it gives
SPEEDUPS = {
    "wall_s": "wall_clock_speedup",
    "steps": "step_speedup",
    "tokens": "token_speedup",
    "flops": "flop_speedup",
}


def compare_runs(
    run_a: Run,
    run_b: Run,
    target: float | None = None,
    *,
    n_boot: int = 200,
    level: float = robust.DEFAULT_LEVEL,
    seed: int = 0,
) -> dict:
    """Costs of A and B to reach ``target`` and the speedups (A's cost / B's cost)."""
    best = {"A": _best_loss(run_a), "B": _best_loss(run_b)}
    if target is None:
        worse = "A" if best["A"] >= best["B"] else "B"
        target, source = best[worse], f"best validation loss of the worse run ({worse})"
    else:
        source = "given"
    costs = {
        "A": _cost_to_reach(run_a, target, n_boot, level, seed),
        "B": _cost_to_reach(run_b, target, n_boot, level, seed + 1),
    }
    result = {
        "run_a": str(run_a.path),
        "run_b": str(run_b.path),
        "target_loss": float(target),
        "target_source": source,
        "best_loss": best,
        "A": {k: v for k, v in costs["A"].items() if not k.startswith("_")},
        "B": {k: v for k, v in costs["B"].items() if not k.startswith("_")},
        "extrapolated": costs["A"]["extrapolated"] or costs["B"]["extrapolated"],
    }
    intervals = {}
    for axis, name in SPEEDUPS.items():
        a, b = costs["A"]["_raw"].get(axis), costs["B"]["_raw"].get(axis)
        if a is None or b is None:
            result[name] = None
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = a[0] / b[0]
            result[name] = float(ratio) if np.isfinite(ratio) else None
            if result["extrapolated"]:
                samples = np.asarray(a[1]) / np.asarray(b[1])
                df = min(c["_df"] for c in costs.values() if c["_df"])
                intervals[name] = robust.estimate(ratio, samples, level, df)
    if intervals:
        result["speedup_intervals"] = intervals
    for key in ("A", "B"):
        if not costs[key]["reached"]:
            result.setdefault("notes", []).append(
                f"run {key} never reached loss {target:.4g} (best {best[key]:.4g}); its costs "
                "are extrapolated with a power-law fit and carry intervals."
            )
    return result


def _best_loss(run: Run) -> float:
    return float(np.min(run.evals["val_loss"])) if run.evals["val_loss"].size else np.inf


def _cost_to_reach(run: Run, target: float, n_boot: int, level: float, seed: int) -> dict:
    ev = run.evals
    fpt = run.flops_per_token
    flops = ev["flops"] if np.all(np.isfinite(ev["flops"])) else None
    if flops is None and fpt is not None:
        flops = ev["tokens"] * fpt
    axes = {"tokens": ev["tokens"], "steps": ev["step"], "wall_s": ev["wall_s"], "flops": flops}
    axes = {k: v for k, v in axes.items() if v is not None and np.all(np.isfinite(v))}

    index, frac = extrapolate.first_crossing(ev["val_loss"][None], target)
    if ev["val_loss"].size and index[0] >= 0:
        values = {
            k: float(extrapolate.value_at_crossing(v, index, frac)[0]) for k, v in axes.items()
        }
        raw = {k: (v, np.full(n_boot, v)) for k, v in values.items()}
        return {"reached": True, "extrapolated": False, **values, "_raw": raw, "_df": None}

    fitted = fit_run(run, forms=("power",), n_boot=n_boot, level=level, seed=seed)
    fit = fitted.fits["power"]
    point, samples = extrapolate.x_to_reach(fit, target)
    raw = {
        "tokens": (point, samples),
        "steps": (run.tokens_to_steps(point), run.tokens_to_steps(samples)),
    }
    if fitted.wall_rate is not None:
        raw["wall_s"] = (fitted.wall_at(point), fitted.wall_at(samples))
    if fpt is not None:
        raw["flops"] = (point * fpt, samples * fpt)
    out = {
        "reached": False,
        "extrapolated": True,
        "method": f"power-law fit {fit.form.formula} on tokens, bootstrap interval",
        "p_reach": float(np.mean(np.isfinite(samples))) if samples.size else None,
    }
    out.update({k: robust.estimate(p, s, level, fit.df) for k, (p, s) in raw.items()})
    return {**out, "_raw": raw, "_df": fit.df}
