"""The paper's claims beside our measurements, each with a verdict and the rule behind it.

Verdicts are "supports", "contradicts" or "cannot decide". Every rule compares the claim
with the measurement over all seeds (their min-max), so one lucky seed decides nothing; with
a single seed the rule is the same but the report says that no spread is available.
"""

from __future__ import annotations

import statistics

SUPPORTS, CONTRADICTS, UNDECIDED = "supports", "contradicts", "cannot decide"

# (low, high) speedups as published (Komatsuzaki 2019, abstract).
PAPER = {
    "one_epoch_10": (1.9, 3.3),
    "size_adjustment": (1.0, 2.7),
    "combined": (3.3, 5.1),
}

RANGE_RULE = (
    "supports when the min-max over seeds of our wall-clock speedup overlaps the paper's "
    "range; contradicts when every seed lies outside it on the same side; cannot decide when "
    "a seed's comparison is missing or rests on an extrapolated cost. Where the machine's "
    "load bent a comparison (see its throughput note) the speedup at each run's median "
    "throughput is judged instead, and the verdict says so."
)


def spread(values) -> dict:
    """Median and min-max of per-seed values (None where a seed has no value)."""
    present = [float(v) for v in values if v is not None]
    out = {"values": list(values), "n": len(present)}
    if present:
        out.update(median=statistics.median(present), min=min(present), max=max(present))
    if len(present) < 2:
        out["note"] = "one seed: no spread available" if present else "no value"
    return out


def judge_range(comparisons: list[dict], paper: tuple[float, float]) -> dict:
    """A speedup claim: our per-seed wall-clock speedups against the paper's range."""
    lo, hi = paper
    values, used_median, problems = [], False, []
    for c in comparisons:
        value = c.get("wall_clock_speedup")
        if not c.get("throughput_steady", True) and c.get(
            "wall_clock_speedup_at_median_throughput"
        ):
            value, used_median = c["wall_clock_speedup_at_median_throughput"], True
        if value is None:
            problems.append("a comparison has no speedup (a run never reached the target)")
        elif c.get("extrapolated"):
            problems.append("a run never reached the target: its cost is extrapolated")
        values.append(value)
    stats = spread(values)
    if problems:
        verdict = UNDECIDED
    elif stats["max"] < lo or stats["min"] > hi:
        verdict = CONTRADICTS
    else:
        verdict = SUPPORTS
    why = [*dict.fromkeys(problems)]
    if used_median:
        why.append("judged at each run's median throughput (the machine's load bent wall-clock)")
    if stats["n"] == 1:
        why.append("one seed: no spread available")
    if verdict == CONTRADICTS:
        why.append("above the paper's range" if stats["min"] > hi else "below the paper's range")
    basis = "median" if used_median else "wall-clock"
    return {"verdict": verdict, "measured": stats, "paper": list(paper), "why": why, "basis": basis}


def judge(exps: dict, job: dict) -> list[dict]:
    claims = []
    exp1 = exps["exp1"]
    for x in exp1:
        e = x["epochs"]
        for vs, label in (("vs_repeated", "dropout 0"), ("vs_regularized", "dropout 0.1")):
            comps = [r[vs] for r in x["per_seed"]]
            paper = PAPER["one_epoch_10"] if e == 10 else None
            entry = {
                "experiment": 1,
                "claim": f"one epoch reaches the {e:g}-epoch run's ({label}) best test loss "
                + ("1.9-3.3x sooner in wall-clock" if paper else "sooner in wall-clock"),
                "rule": RANGE_RULE if paper else _FASTER_RULE,
            }
            entry.update(judge_range(comps, paper) if paper else _judge_faster(comps))
            claims.append(entry)
    if len(exp1) > 1:
        claims.append(_larger_e(exp1))
    claims.append(_no_overfitting(exp1))
    claims.append(_dropout_slows(exps["exp2"]))
    claims.append(_power_law(exps["exp3"]))
    claims.append(_forecast(exps["exp3"]))
    for b in exps["exp4"]:
        comps = [r["rules"]["komatsuzaki"] for r in b["per_seed"] if "komatsuzaki" in r["rules"]]
        if not comps:
            continue
        entry = {
            "experiment": 4,
            "claim": f"at {b['fraction']:g}x experiment 1's compute, the size and iterations of "
            "the paper's heuristic (komatsuzaki) reach the baseline's final loss 1-2.7x sooner",
            "rule": RANGE_RULE,
        }
        entry.update(judge_range(comps, PAPER["size_adjustment"]))
        claims.append(entry)
    comps = [s["komatsuzaki"] for s in exps["exp5"]["per_seed"] if "komatsuzaki" in s]
    if comps:
        entry = {
            "experiment": 5,
            "claim": f"one epoch at the adjusted size reaches the regularized "
            f"{exps['exp5']['epochs']:g}-epoch baseline's best loss 3.3-5.1x sooner",
            "rule": RANGE_RULE,
        }
        entry.update(judge_range(comps, PAPER["combined"]))
        claims.append(entry)
    return claims


_FASTER_RULE = (
    "no published range for this E: supports when every seed's wall-clock speedup is above 1, "
    "contradicts when every seed's is below 1, else cannot decide."
)


def _judge_faster(comps: list[dict]) -> dict:
    values = [c.get("wall_clock_speedup") for c in comps]
    stats = spread(values)
    if None in values or any(c.get("extrapolated") for c in comps):
        verdict = UNDECIDED
    elif stats["min"] > 1:
        verdict = SUPPORTS
    elif stats["max"] < 1:
        verdict = CONTRADICTS
    else:
        verdict = UNDECIDED
    return {"verdict": verdict, "measured": stats, "paper": None, "why": []}


def _larger_e(exp1: list[dict]) -> dict:
    medians = [
        (x["epochs"], x["summary"]["vs_regularized"]["wall_clock_speedup"].get("median"))
        for x in exp1
    ]
    ok = [m for _, m in medians if m is not None]
    if len(ok) < len(medians):
        verdict = UNDECIDED
    elif all(b > a for a, b in zip(ok, ok[1:])):
        verdict = SUPPORTS
    elif all(b < a for a, b in zip(ok, ok[1:])):
        verdict = CONTRADICTS
    else:
        verdict = UNDECIDED
    return {
        "experiment": 1,
        "claim": "the speedup is larger for more epochs",
        "rule": "supports when the median speedup over the regularized baseline rises with E "
        "at every step, contradicts when it falls at every step, else cannot decide.",
        "verdict": verdict,
        "measured": {f"{e:g}": m for e, m in medians},
        "paper": None,
        "why": [],
    }


def _no_overfitting(exp1: list[dict]) -> dict:
    one = [r["curves"]["one_epoch"]["turns_up"] for x in exp1[:1] for r in x["per_seed"]]
    many = [r["curves"]["repeated"]["turns_up"] for x in exp1 for r in x["per_seed"]]
    if not any(one) and any(many):
        verdict = SUPPORTS
    elif all(one):
        verdict = CONTRADICTS
    else:
        verdict = UNDECIDED
    return {
        "experiment": 1,
        "claim": "under one-epoch training there is no overfitting",
        "rule": "a curve overfits when its last validation loss is more than 0.5% above its "
        "best. Supports when no seed's one-epoch curve overfits while some multi-epoch curve "
        "does (so the test can see overfitting); contradicts when every seed's one-epoch curve "
        "overfits; else cannot decide.",
        "verdict": verdict,
        "measured": {"one_epoch_overfits": one, "multi_epoch_overfits": many},
        "paper": None,
        "why": [] if any(many) else ["no multi-epoch run overfitted: the preset is too short"],
    }


def _dropout_slows(exp2: dict) -> dict:
    gaps = {p: s["gap"]["values"] for p, s in exp2["summary"].items()}
    flat = [g for values in gaps.values() for g in values]
    if all(g > 0 for g in flat):
        verdict = SUPPORTS
    elif any(all(g < 0 for g in values) for values in gaps.values()):
        verdict = CONTRADICTS
    else:
        verdict = UNDECIDED
    return {
        "experiment": 2,
        "claim": "under one epoch, dropout only slows training down",
        "rule": "supports when every dropout run of every seed ends with a higher validation loss "
        "than the dropout-0 run; contradicts when some dropout rate ends lower in every seed; "
        "else cannot decide.",
        "verdict": verdict,
        "measured": {p: exp2["summary"][p]["gap"] for p in gaps},
        "paper": None,
        "why": [],
    }


def _power_law(exp3: dict) -> dict:
    holds = [run["holds"] for seed in exp3["per_seed"] for run in seed.values() if "holds" in run]
    decades = [h["decades"] for h in holds]
    if not holds:
        verdict = UNDECIDED
    elif min(decades) >= 1.0:
        verdict = SUPPORTS
    elif max(h["max_abs_residual"] for h in holds) > 0.05 and max(decades) < 0.5:
        verdict = CONTRADICTS
    else:
        verdict = UNDECIDED
    return {
        "experiment": 3,
        "claim": "test loss over iterations follows a power law over a wide range",
        "rule": "the power law L = E + A t^-alpha is fitted to each one-epoch curve; it holds "
        "over the widest stretch of evaluations within 2% of it. Supports when that stretch "
        "spans at least one decade of tokens on every curve; contradicts when the fit misses "
        "by more than 5% and holds over less than half a decade on every curve; else cannot "
        "decide (a run too short to span a decade after its warm-up cannot show it).",
        "verdict": verdict,
        "measured": spread(decades) | {"unit": "decades of tokens"},
        "paper": None,
        "why": [],
    }


def _forecast(exp3: dict) -> dict:
    fc = [
        run["forecast"]
        for seed in exp3["per_seed"]
        for run in seed.values()
        if run.get("forecast", {}).get("error") is not None
    ]
    covered = [f["covered"] for f in fc]
    if not fc:
        verdict = UNDECIDED
    elif all(covered):
        verdict = SUPPORTS
    elif not any(covered):
        verdict = CONTRADICTS
    else:
        verdict = UNDECIDED
    return {
        "experiment": 3,
        "claim": "the power law fitted to the first 30% of a one-epoch run forecasts its final "
        "loss (oneepoch's use of the claim)",
        "rule": "supports when every observed final loss lies in its forecast's 90% interval; "
        "contradicts when none does; else cannot decide.",
        "verdict": verdict,
        "measured": spread([f["error"] for f in fc])
        | {"unit": "relative error", "covered": covered},
        "paper": None,
        "why": [],
    }
