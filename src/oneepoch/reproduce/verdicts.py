"""The paper's claims beside our measurements, each with a verdict and the rule behind it.

Verdicts are "supports", "contradicts" or "cannot decide". Every rule compares the claim
with the measurement over all seeds (their min-max), so one lucky seed decides nothing; with
a single seed the rule is the same but the report says that no spread is available. Each
rule's thresholds are constants below, and the rule's text is written from them, so the
report states the rule that was applied.

A verdict tests what it names: a claim about a rule's tokens per parameter is judged only on
a run that had them (within ``RATIO_TOLERANCE``), a claim about a power law over a wide
range only on curves that span that range.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field

from oneepoch.analysis.robust import DEFAULT_LEVEL as INTERVAL
from oneepoch.plan.planner import RATIO_TOLERANCE
from oneepoch.reproduce.experiments import PAPER_EPOCHS

SUPPORTS, CONTRADICTS, UNDECIDED = "supports", "contradicts", "cannot decide"


@dataclass
class Claim:
    """A claim of the paper beside our measurement: what the verdict decided, the report's
    table and rules, and the speedups figure read; an entry of results.json's "claims"."""

    experiment: int
    claim: str  # the claim, as the report states it
    label: str  # a short name (the figure's axis)
    rule: str  # how the verdict is decided, from the constants below
    verdict: str  # SUPPORTS, CONTRADICTS or UNDECIDED
    measured: dict  # a speedup's spread over seeds (its "values"), or the facts judged
    paper: list[float] | None = None  # the published (low, high) speedup, if any
    why: list[str] = field(default_factory=list)  # what qualified the verdict
    ours: str | None = None  # the measurement in a sentence, where it is not a speedup
    steps: dict | None = None  # the step speedup's spread, beside a wall-clock speedup
    basis: str | None = None  # "wall-clock", or "median" where load bent the wall-clock
    fraction: float | None = None  # experiment 4's compute budget

    def __getitem__(self, key: str):  # read as the results.json entry it becomes
        return getattr(self, key)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None or k == "paper"}

    @classmethod
    def from_dict(cls, entry: dict) -> Claim:
        return cls(**entry)


# (low, high) speedups as published (Komatsuzaki 2019, abstract).
PAPER = {
    "one_epoch_10": (1.9, 3.3),
    "size_adjustment": (1.0, 2.7),
    "combined": (3.3, 5.1),
}

# Overfitting: a validation curve "turns up" when its last loss is this far above its best.
TURN_UP = 0.005
# The power law: it "holds" where the fitted L = E + A t^-alpha is within HOLDS_WITHIN of
# every evaluation; the claim "over a wide range" is judged on experiment 3's run, whose
# fitted range (from where the warm-up's effect ends) must span WIDE_DECADES of tokens.
HOLDS_WITHIN = 0.02
WIDE_DECADES = 1.0
# A law that misses by more than MISSES_BEYOND somewhere and holds over fewer than
# HOLDS_UNDER decades, on every run, contradicts the claim.
MISSES_BEYOND = 0.05
HOLDS_UNDER = 0.5
# The forecast from the first FORECAST_FRACTION of a run: supports when the median absolute
# error is within FORECAST_SUPPORTS and at least FORECAST_COVERAGE of the observed losses lie
# in their INTERVAL (90%) intervals (3 of 4 or more); contradicts when the median
# absolute error exceeds FORECAST_CONTRADICTS or no observed loss lies in its interval.
FORECAST_FRACTION = 0.3
FORECAST_SUPPORTS = 0.02
FORECAST_CONTRADICTS = 0.05
FORECAST_COVERAGE = 0.75

RANGE_RULE = (
    "supports when the min-max over seeds of our wall-clock speedup overlaps the paper's "
    "range; contradicts when every seed lies outside it on the same side; cannot decide when "
    "a seed's comparison is missing or rests on an extrapolated cost. Where the machine's "
    "load bent a comparison (see its throughput note) the speedup at each run's median "
    "throughput is judged instead, and the verdict says so. The step speedup beside it is "
    "what the runs' per-step costs cannot bend."
)
RATIO_RULE = (
    f"A claim about a rule's size and iterations is judged only on a run whose tokens per "
    f"parameter are within {RATIO_TOLERANCE - 1:.0%} of the rule's; otherwise cannot decide, "
    "saying what the run had. " + RANGE_RULE[0].upper() + RANGE_RULE[1:]
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
    return {
        "verdict": verdict,
        "measured": stats,
        "steps": spread([c.get("step_speedup") for c in comparisons]),
        "paper": list(paper),
        "why": why,
        "basis": basis,
    }


def ratio_miss(rule_run: dict) -> str | None:
    """Why a rule's run does not test the rule, or None when its tokens per parameter are
    within RATIO_TOLERANCE of the rule's."""
    asked, ran = rule_run.get("target_tokens_per_param"), rule_run.get("tokens_per_param")
    if not asked or not ran or abs(math.log(ran / asked)) <= math.log(RATIO_TOLERANCE):
        return None
    return f"ran {ran:.3g} tokens per parameter, the rule asks {asked:g}"


def judge(exps: dict, job: dict) -> list[Claim]:
    claims = []
    exp1 = exps["exp1"]
    for x in exp1:
        e = x["epochs"]
        for vs, label in (("vs_repeated", "dropout 0"), ("vs_regularized", "dropout 0.1")):
            comps = [r[vs] for r in x["per_seed"]]
            paper = PAPER["one_epoch_10"] if e == PAPER_EPOCHS else None
            claims.append(
                Claim(
                    experiment=1,
                    claim=f"one epoch reaches the {e:g}-epoch run's ({label}) best test loss "
                    + (
                        f"{speedup_range(paper)} sooner in wall-clock"
                        if paper
                        else "sooner in wall-clock"
                    ),
                    label=f"1 epoch vs {e:g} epochs, {label}",
                    rule=RANGE_RULE if paper else _FASTER_RULE,
                    **(judge_range(comps, paper) if paper else _judge_faster(comps)),
                )
            )
    if len(exp1) > 1:
        claims.append(_larger_e(exp1))
    claims.append(_no_overfitting(exp1))
    claims.append(_dropout_slows(exps["exp2"]))
    claims.append(_power_law(exps["exp3"]))
    claims.append(_forecast(exps["exp3"]))
    for b in exps["exp4"]:
        if "komatsuzaki" not in b["rules"]:
            continue
        paper = PAPER["size_adjustment"]
        comps = [r["rules"]["komatsuzaki"] for r in b["per_seed"]]
        claims.append(
            Claim(
                experiment=4,
                claim=f"at {_fraction(b['fraction'])} experiment 1's compute, the size and "
                "iterations of the paper's heuristic (komatsuzaki) reach the baseline's final "
                f"loss {speedup_range(paper)} sooner",
                label=f"komatsuzaki size at {_fraction(b['fraction'])} compute",
                fraction=b["fraction"],
                rule=RATIO_RULE,
                **_judge_rule(comps, b["rules"]["komatsuzaki"], paper),
            )
        )
    e5 = exps["exp5"]
    if "komatsuzaki" in e5["adjusted"]:
        paper = PAPER["combined"]
        comps = [s["komatsuzaki"] for s in e5["per_seed"]]
        claims.append(
            Claim(
                experiment=5,
                claim=f"one epoch at the adjusted size reaches the regularized "
                f"{e5['epochs']:g}-epoch baseline's best loss {speedup_range(paper)} sooner",
                label=f"komatsuzaki size vs {e5['epochs']:g} epochs + dropout",
                rule=RATIO_RULE,
                **_judge_rule(comps, e5["rules"]["komatsuzaki"], paper),
            )
        )
    return claims


def speedup_range(paper: tuple[float, float]) -> str:
    """A published speedup range as the claims state it: 1.9-3.3x."""
    return f"{paper[0]:g}-{paper[1]:g}x"


def _judge_rule(comps: list[dict], rule_run: dict, paper: tuple[float, float]) -> dict:
    """A speedup claim about a rule's run: judged on the speedup only when the run had the
    rule's tokens per parameter."""
    out = judge_range(comps, paper)
    miss = ratio_miss(rule_run)
    if miss:
        out["verdict"] = UNDECIDED
        out["why"] = [miss] + [w for w in out["why"] if "paper's range" not in w]
    return out


def _fraction(f: float) -> str:
    return "1x" if f == 1 else f"1/{1 / f:g}" if (1 / f).is_integer() else f"{f:g}x"


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
    steps = spread([c.get("step_speedup") for c in comps])
    return {"verdict": verdict, "measured": stats, "steps": steps, "paper": None, "why": []}


def _larger_e(exp1: list[dict]) -> Claim:
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
    ours = "; ".join(
        f"{'n/a' if m is None else f'{m:.2f}x'} against {e:g} epochs" for e, m in medians
    )
    return Claim(
        experiment=1,
        claim="the speedup is larger for more epochs",
        label="speedup grows with epochs",
        rule="supports when the median speedup over the regularized baseline rises with E "
        "at every step, contradicts when it falls at every step, else cannot decide.",
        verdict=verdict,
        measured={f"{e:g}": m for e, m in medians},
        ours=f"median wall-clock speedup {ours}",
    )


def _no_overfitting(exp1: list[dict]) -> Claim:
    one = [r["curves"]["one_epoch"]["turns_up"] for x in exp1[:1] for r in x["per_seed"]]
    many = [r["curves"]["repeated"]["turns_up"] for x in exp1 for r in x["per_seed"]]
    if not any(one) and any(many):
        verdict = SUPPORTS
    elif all(one):
        verdict = CONTRADICTS
    else:
        verdict = UNDECIDED
    return Claim(
        experiment=1,
        claim="under one-epoch training there is no overfitting",
        label="no overfitting under one epoch",
        rule=f"a curve overfits when its last validation loss is more than {TURN_UP:.1%} "
        "above its best. Supports when no seed's one-epoch curve overfits while some "
        "multi-epoch curve does (so the test can see overfitting); contradicts when every "
        "seed's one-epoch curve overfits; else cannot decide.",
        verdict=verdict,
        measured={"one_epoch_overfits": one, "multi_epoch_overfits": many},
        ours=f"{_overfitted(one, 'one-epoch')}; {_overfitted(many, 'multi-epoch (dropout 0)')}",
        why=[] if any(many) else ["no multi-epoch run overfitted: the preset is too short"],
    )


def _overfitted(flags: list[bool], what: str) -> str:
    """'the one-epoch curve did not overfit', 'all 3 multi-epoch curves overfitted', ..."""
    n = sum(bool(f) for f in flags)
    if len(flags) == 1:
        return f"the {what} curve {'overfitted' if n else 'did not overfit'}"
    which = "none" if n == 0 else "all" if n == len(flags) else str(n)
    return f"{which} of {len(flags)} {what} curves overfitted"


def _dropout_slows(exp2: dict) -> Claim:
    gaps = {p: s["gap"]["values"] for p, s in exp2["summary"].items()}
    flat = [g for values in gaps.values() for g in values]
    if all(g > 0 for g in flat):
        verdict = SUPPORTS
    elif any(all(g < 0 for g in values) for values in gaps.values()):
        verdict = CONTRADICTS
    else:
        verdict = UNDECIDED
    parts = []
    for p, s in exp2["summary"].items():
        g = s["gap"]
        span = f" [{g['min']:+.3f}, {g['max']:+.3f}]" if g["n"] > 1 else ""
        parts.append(f"dropout {p}: final loss {g['median']:+.3f}{span} nats against dropout 0")
    return Claim(
        experiment=2,
        claim="under one epoch, dropout only slows training down",
        label="dropout slows one epoch",
        rule="supports when every dropout run of every seed ends with a higher validation loss "
        "than the dropout-0 run; contradicts when some dropout rate ends lower in every seed; "
        "else cannot decide.",
        verdict=verdict,
        measured={p: exp2["summary"][p]["gap"] for p in gaps},
        ours="; ".join(parts),
    )


def _power_law(exp3: dict) -> Claim:
    judged = [run for seed in exp3["per_seed"] for run in seed.values() if run.get("judged")]
    holds = [run["holds"] for run in judged if "holds" in run]
    decades = [h["decades"] for h in holds]
    short = [h["fitted_decades"] for h in holds if h["fitted_decades"] < WIDE_DECADES]
    why = []
    if not holds or len(holds) < len(judged):
        verdict = UNDECIDED
        why.append("experiment 3 has no run, or its power law could not be fitted")
    elif short:
        verdict = UNDECIDED
        why.append(
            f"experiment 3's run spans only {min(short):.2f} decades of tokens after its "
            f"warm-up, less than the {WIDE_DECADES:g} the claim needs"
        )
    elif min(decades) >= WIDE_DECADES:
        verdict = SUPPORTS
    elif max(h["max_abs_residual"] for h in holds) > MISSES_BEYOND and max(decades) < HOLDS_UNDER:
        verdict = CONTRADICTS
    else:
        verdict = UNDECIDED
    stats = spread(decades)
    spans = spread([h["fitted_decades"] for h in holds])
    ours = (
        f"holds over {_values(stats, '{:.2f}')} of {_values(spans, '{:.2f}')} decades of "
        f"tokens fitted (largest miss {max(h['max_abs_residual'] for h in holds):.1%}), on "
        f"{len(holds)} curve{'s' if len(holds) != 1 else ''}"
        if holds
        else "no curve"
    )
    return Claim(
        experiment=3,
        claim="test loss over iterations follows a power law over a wide range",
        label="power law over a decade",
        rule="the power law L = E + A t^-alpha is fitted to experiment 3's run (one epoch, "
        "long enough to span the range the claim is about) from where the warm-up's effect "
        f"ends (twice the warm-up) to its end; it holds over the widest stretch of "
        f"evaluations within {HOLDS_WITHIN:.0%} of it. Supports when that stretch spans at "
        f"least {WIDE_DECADES:g} decade of tokens on every seed's run; contradicts when on "
        f"every one the law misses by more than {MISSES_BEYOND:.0%} somewhere and holds over "
        f"less than {HOLDS_UNDER:g} decade; else cannot decide (also when the fitted range is shorter "
        f"than {WIDE_DECADES:g} decade: such a run cannot show it). The other one-epoch curves "
        "are fitted and shown, not judged: they are too short.",
        verdict=verdict,
        measured=stats | {"unit": "decades of tokens"},
        ours=ours,
        why=why,
    )


def _forecast(exp3: dict) -> Claim:
    runs = [
        (key, run["forecast"])
        for seed in exp3["per_seed"]
        for key, run in seed.items()
        # a forecast that could not be made holds its reason as a string, not an error
        if isinstance(run.get("forecast", {}).get("error"), float)
    ]
    fc = [f for _, f in runs]
    verdict, facts = judge_forecast(fc, [key for key, _ in runs])
    # the forecasts that warned their fitted range ends near an n-gram plateau, apart
    near = spread([f["error"] for f in fc if f.get("near_ngram_levels")])
    facts["near_plateau"] = {"n": near["n"], "errors": near}
    ours = (
        f"median error {facts['bias']:+.1%} (absolute {facts['median_abs_error']:.1%}); "
        f"{facts['covered']} of {facts['n']} inside their {INTERVAL:.0%} intervals, median width "
        f"{facts['median_width']:.1%} of the forecast; by run, median error over seeds: "
        + ", ".join(f"{key} {error:+.1%}" for key, error in facts["by_run"].items())
        + (
            f"; {near['n']} of {facts['n']} warned that their fitted range ends near the "
            f"data's unigram or bigram loss (errors {_values(near, '{:+.1%}')})"
            if near["n"]
            else ""
        )
        if fc
        else "no forecast"
    )
    why = [
        f"{key} was forecast {facts['by_run'][key]:+.1%} off"
        + (
            f" on its one seed, more than {FORECAST_CONTRADICTS:.0%}"
            if facts["seeds_by_run"][key] == 1
            else f" (median), more than {FORECAST_SUPPORTS:.0%} on the same side on every seed"
        )
        for key in facts.get("biased_runs", [])
    ]
    return Claim(
        experiment=3,
        claim=f"the power law fitted to the first {FORECAST_FRACTION:.0%} of a one-epoch run "
        "forecasts its final loss (oneepoch's use of the claim)",
        label=f"forecast from {FORECAST_FRACTION:.0%}",
        rule=FORECAST_RULE,
        verdict=verdict,
        measured=spread([f["error"] for f in fc])
        | {"unit": "relative error", "covered": [f["covered"] for f in fc], **facts},
        why=why,
        ours=ours,
    )


FORECAST_RULE = (
    f"on every one-epoch curve of the job (experiments 1-4's, read from a longer run's first "
    f"steps where they are one), the forecast of the final loss from the first "
    f"{FORECAST_FRACTION:.0%} of its evaluations, with its {INTERVAL:.0%} interval. Supports when the "
    f"median absolute error is at most {FORECAST_SUPPORTS:.0%} and at least {FORECAST_COVERAGE:.0%} "
    f"of the observed final losses lie in their intervals (accurate and honest about it); "
    f"contradicts when the median absolute error exceeds {FORECAST_CONTRADICTS:.0%} or no observed "
    f"loss lies in its interval; else cannot decide. A wide interval alone cannot earn "
    "supports: the bias (median signed error) and the median interval width are shown. "
    f"Nor can a pooled median that hides one run: a run (the same run over seeds) forecast "
    f"more than {FORECAST_SUPPORTS:.0%} off on the same side on every seed, two seeds or more "
    f"(more than {FORECAST_CONTRADICTS:.0%} off with one seed), keeps the verdict from supports."
)


def judge_forecast(forecasts: list[dict], runs: list[str] | None = None) -> tuple[str, dict]:
    """The forecast rule on forecasts {error, covered, value, ci_low, ci_high}, ``runs``
    naming the run of each (the same run over seeds): the verdict, and the facts it rests
    on (bias, median absolute error, coverage, median interval width, each run's median
    error and the runs biased on every seed)."""
    if not forecasts:
        return UNDECIDED, {"n": 0}
    errors = [f["error"] for f in forecasts]
    covered = sum(bool(f["covered"]) for f in forecasts)
    widths = [
        (f["ci_high"] - f["ci_low"]) / f["value"]
        for f in forecasts
        if f.get("ci_low") is not None and f.get("ci_high") is not None and f.get("value")
    ]
    facts = {
        "n": len(forecasts),
        "bias": statistics.median(errors),
        "median_abs_error": statistics.median(abs(e) for e in errors),
        "covered": covered,
        "coverage": covered / len(forecasts),
        "median_width": statistics.median(widths) if widths else float("nan"),
    }
    by_run: dict[str, list[float]] = {}
    for key, error in zip(runs or [], errors):
        by_run.setdefault(key, []).append(error)
    facts["by_run"] = {key: statistics.median(e) for key, e in by_run.items()}
    facts["seeds_by_run"] = {key: len(e) for key, e in by_run.items()}
    # a run off on the same side on every seed is biased; one seed cannot show that for a
    # small miss, but a miss beyond FORECAST_CONTRADICTS is no noise of an accurate forecast
    facts["biased_runs"] = [
        key
        for key, e in by_run.items()
        for bound in [FORECAST_SUPPORTS if len(e) >= 2 else FORECAST_CONTRADICTS]
        if all(x > bound for x in e) or all(x < -bound for x in e)
    ]
    accurate = facts["median_abs_error"] <= FORECAST_SUPPORTS
    if accurate and facts["coverage"] >= FORECAST_COVERAGE and not facts["biased_runs"]:
        return SUPPORTS, facts
    if facts["median_abs_error"] > FORECAST_CONTRADICTS or covered == 0:
        return CONTRADICTS, facts
    return UNDECIDED, facts


def _values(s: dict, fmt: str) -> str:
    """median [min, max] of a spread, or the one value."""
    if s["n"] == 0:
        return "n/a"
    if s["n"] == 1:
        return fmt.format(s["median"])
    return f"{fmt.format(s['median'])} [{fmt.format(s['min'])}, {fmt.format(s['max'])}]"
