"""Speedup of one run over another: the cost ratio for reaching the same validation loss.

The target is by default the best loss the worse run reached, so both runs reach it
without extrapolation. Each run's cost (wall-clock, steps, tokens, FLOPs) is read where
its eval curve first reaches the target, interpolating log-log between eval points. A run
that never reaches the target is extrapolated with its power-law fit, with a bootstrap
interval, and flagged.

Wall-clock is the paper's metric, and load elsewhere on the machine can slow one run for
a while (tenfold, on a shared 2-core CPU). So every comparison also checks the runs'
throughput (``throughput_check``), each run against its own quiet speed: a run that spent
more than a few percent of its training time far from its own median tokens/s, or two runs
of the same configuration (everything that sets a step's cost: shape, batch, dtype,
dropout, compilation) whose medians differ, are named in a note, and the wall-clock
speedup is given again at each run's median throughput. Runs that differ in configuration
are never held to each other's speed: dropout alone costs a CPU a quarter of its step.
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
    _add_speedups(result, costs, level)
    reached = [key for key in ("A", "B") if costs[key]["reached"]]
    if not reached:
        # Two extrapolations divided by each other are no measurement of a speedup.
        for name in SPEEDUPS.values():
            result[name] = None
        result.pop("speedup_intervals", None)
        result["no_common_loss"] = True
        result.setdefault("notes", []).append(
            f"neither run reached loss {target:.4g} (best losses: A {best['A']:.4g}, B "
            f"{best['B']:.4g}), so there is no speedup to report; give a --target-loss that "
            "at least one run reaches."
        )
    for key, run in (("A", run_a), ("B", run_b)):
        if reached and key not in reached:
            _add_bound(result, key, _trained(run), costs[key], costs[reached[0]], best[key])
    check = throughput_check({"A": run_a, "B": run_b})
    result["throughput"] = check
    at_median = _speedup_at_median_throughput(costs, check)
    result["wall_clock_speedup_at_median_throughput"] = at_median
    if check["notes"]:
        result.setdefault("notes", []).extend(check["notes"])
        if at_median is not None:
            result["notes"].append(
                f"at each run's median throughput the wall-clock speedup would be {at_median:.3g}x."
            )
    return result


def _add_speedups(result: dict, costs: dict, level: float) -> None:
    """A's cost / B's on each axis, with intervals when either cost is extrapolated."""
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


def _add_bound(result: dict, key: str, trained: dict, cost: dict, other: dict, best: float) -> None:
    """Run ``key`` never reached the target: its whole length bounds its cost (a lower bound
    on A's cost, so on the speedup; an upper one for B), and when its extrapolated cost lies
    far beyond that length the bound is all there is."""
    reach = other["_raw"]
    bound = {
        name: (trained[axis] / reach[axis][0] if key == "A" else reach[axis][0] / trained[axis])
        for axis, name in SPEEDUPS.items()
        if trained.get(axis) and axis in reach and reach[axis][0] > 0
    }
    result["bound"] = {"kind": "lower" if key == "A" else "upper", **bound}
    tokens = cost["_raw"]["tokens"][0]
    far = not np.isfinite(tokens) or tokens > BOUND_ONLY_BEYOND * trained["tokens"]
    step_bound = bound.get("step_speedup")
    target = result["target_loss"]
    result.setdefault("notes", []).append(
        f"run {key} never reached loss {target:.4g} (best {best:.4g}); its costs "
        "are extrapolated with a power-law fit and carry intervals"
        + (
            f", but that is more than {BOUND_ONLY_BEYOND:g}x its trained length: the "
            f"ratio is only a bound (step speedup {'at least' if key == 'A' else 'at most'} "
            f"{step_bound:.3g}x)."
            if far and step_bound
            else "."
        )
    )
    result["bound_only"] = bool(far)


# An extrapolation past this multiple of a run's trained tokens is reported as a bound only.
BOUND_ONLY_BEYOND = 3.0


def _trained(run: Run) -> dict:
    """The costs of the whole run: a bound on the cost of a loss it never reached."""
    last = {axis: run.lines[axis][-1] for axis in ("wall_s", "tokens", "flops")}
    out = {k: float(v) for k, v in last.items() if np.isfinite(v)}
    out["steps"] = float(run.lines["step"][-1])
    return out


# A run is "steady" when at most STEADY_SHARE of its training time ran more than
# RATE_TOLERANCE away from its median tokens/s; runs of one shape agree within it too.
RATE_TOLERANCE = 0.25
STEADY_SHARE = 0.05
CHUNK_S = 1.0  # throughput is measured over chunks of at least this much training time


def throughput_profile(run: Run) -> dict | None:
    """Median tokens/s of the run's training time and the share of it far from the median.

    The logged lines are grouped into chunks of at least CHUNK_S seconds (single lines are
    too short to time); wall_s excludes evaluation and checkpoints already.
    """
    t, w = run.lines["tokens"], run.lines["wall_s"]
    ok = np.isfinite(t) & np.isfinite(w)
    t, w = np.concatenate([[0.0], t[ok]]), np.concatenate([[0.0], w[ok]])
    rates, spans, start = [], [], 0
    chunk = max(CHUNK_S, (w[-1] if w.size else 0.0) / 200)
    for i in range(1, len(w)):
        if w[i] - w[start] >= chunk or i == len(w) - 1:
            dt = w[i] - w[start]
            if dt > 0:
                rates.append((t[i] - t[start]) / dt)
                spans.append(dt)
            start = i
    if not rates:
        return None
    rates, spans = np.asarray(rates), np.asarray(spans)
    median = _weighted_median(rates, spans)
    off = np.abs(rates / median - 1) > RATE_TOLERANCE
    return {
        "median_tokens_per_s": float(median),
        "min_tokens_per_s": float(rates.min()),
        "max_tokens_per_s": float(rates.max()),
        "share_off_median": float(spans[off].sum() / spans.sum()),
        "steady": bool(spans[off].sum() <= STEADY_SHARE * spans.sum()),
        "configuration": speed_configuration(run),
    }


def throughput_check(runs: dict[str, Run]) -> dict:
    """Profiles of ``runs`` (label -> run) and one note per problem found."""
    profiles = {label: throughput_profile(run) for label, run in runs.items()}
    notes = []
    for label, prof in profiles.items():
        if prof is not None and not prof["steady"]:
            notes.append(
                f"run {label} ({runs[label].path}) ran more than {RATE_TOLERANCE:.0%} away from "
                f"its median throughput ({prof['median_tokens_per_s']:,.0f} tokens/s) for "
                f"{prof['share_off_median']:.0%} of its training time "
                f"({prof['min_tokens_per_s']:,.0f}-{prof['max_tokens_per_s']:,.0f} tokens/s): "
                "the machine's load may have bent its wall-clock."
            )
    labels = [k for k, p in profiles.items() if p is not None and p["configuration"] is not None]
    for i, a in enumerate(labels):
        for b in labels[i + 1 :]:
            pa, pb = profiles[a], profiles[b]
            if pa["configuration"] != pb["configuration"]:
                continue  # a step of another configuration has its own speed
            ratio = pa["median_tokens_per_s"] / pb["median_tokens_per_s"]
            if abs(ratio - 1) > RATE_TOLERANCE and abs(1 / ratio - 1) > RATE_TOLERANCE:
                notes.append(
                    f"runs {a} and {b} have the same configuration but their median throughputs differ "
                    f"{max(ratio, 1 / ratio):.2f}x ({pa['median_tokens_per_s']:,.0f} vs "
                    f"{pb['median_tokens_per_s']:,.0f} tokens/s): the machine's load may have "
                    "bent the wall-clock comparison."
                )
    return {"profiles": profiles, "notes": notes, "steady": not notes}


def _speedup_at_median_throughput(costs: dict, check: dict) -> float | None:
    """A's tokens to the target at A's median tokens/s over the same for B."""
    times = []
    for key in ("A", "B"):
        prof = check["profiles"].get(key)
        tokens = costs[key]["_raw"].get("tokens")
        if prof is None or tokens is None or not np.isfinite(tokens[0]):
            return None
        times.append(float(tokens[0]) / prof["median_tokens_per_s"])
    return times[0] / times[1] if times[1] > 0 else None


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cum, cum[-1] / 2)])


def speed_configuration(run: Run) -> tuple | None:
    """What sets the cost of a run's step: model shape, dropout, batch and its split, dtype
    and compilation. Two runs equal in all of these should run equally fast on one machine;
    runs that differ in any (dropout costs a CPU 25-30% of its step) have their own speeds."""
    m, t = run.config.get("model", {}), run.config.get("train", {})
    if not m:
        return None
    model = ("n_layer", "n_head", "d_model", "seq_len")
    return (
        *(m.get(k) for k in model),
        float(m.get("dropout") or 0.0),
        t.get("batch_size"),
        t.get("grad_accum", 1),
        run.info.get("dtype", t.get("dtype")),
        bool(run.info.get("compile", t.get("compile", False))),
    )


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
