"""Forecast benchmark: a run's final loss from its first 30%, over a broad synthetic family.

Each synthetic run has a known curve: 5,000 steps of 65,536 tokens at a constant LR after a
linear warm-up: L = E + A t_eff^-alpha + D exp(-step / 25), t_eff = 65,536 x the LR area
(steps at peak LR) and D the power law's value at step 20, so the loss starts near twice
that and drops fast before the power law takes over, as real curves do. Its factors are drawn at random per seed:

- floor E as a share of the final loss: 0, 30, 60, 90%;
- exponent alpha: 0.05, 0.15, 0.3, 0.6;
- lognormal noise: 0.1, 0.5, 2%;
- evaluation spacing: 85 or 30 log-spaced evaluations, or every 100 steps after
  log-spaced ones up to step 100 (the trainer's default pattern);
- warm-up: 0, 2 or 5% of the steps;
- final loss: uniform in [2.5, 4.5] nats.

`oneepoch fit RUN --use-first 0.3 --predict-at FINAL` is run on each (as fit_run), and the
forecast is compared with the true (noise-free) final loss. Printed per family (each level
of each factor) and overall: median and 90th-percentile |error|, median signed error, and
the coverage of the 90% interval. Run directories given as arguments are measured too,
against their own last evaluation.

The forecast's rules were chosen on seeds 1000-1199 (--seeds 1000:1200); the tables in
docs/analysis.md are seeds 0-299 (looked at before the last rule, the warm-up-0 start, was
chosen) and 300-599 (--seeds 300:600, held out from every choice).

    python benchmarks/forecast.py [--seeds 0:300] [RUN_DIR ...] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FACTORS = {
    "floor": (0.0, 0.3, 0.6, 0.9),
    "alpha": (0.05, 0.15, 0.3, 0.6),
    "noise": (0.001, 0.005, 0.02),
    "spacing": ("log85", "log30", "every100"),
    "warmup": (0.0, 0.02, 0.05),
}
STEPS = 5000
TOKENS_PER_STEP = 65536
# The fast initial drop: a transient D exp(-step / TRANSIENT_STEPS) on top of the power law,
# D its value at step 20, so the loss starts near twice that and falls steeply at first.
TRANSIENT_STEPS = 25


def draw_curve(seed: int) -> dict:
    """One synthetic run's factors and constants (E, A, alpha) from its seed."""
    rng = np.random.default_rng(seed)
    spec = {name: levels[rng.integers(len(levels))] for name, levels in FACTORS.items()}
    final = float(rng.uniform(2.5, 4.5))
    warmup = int(round(spec["warmup"] * STEPS))
    t_final = TOKENS_PER_STEP * _lr_area(np.array([STEPS]), warmup)[0]
    E = spec["floor"] * final
    A = (final - E) * t_final ** spec["alpha"]
    return {**spec, "seed": seed, "E": E, "A": A, "warmup_steps": warmup, "final": final}


def true_loss(curve: dict, steps) -> np.ndarray:
    steps = np.asarray(steps, dtype=float)
    power = _power(curve, _lr_area(steps, curve["warmup_steps"]))
    start = _power(curve, _lr_area(np.array([20.0]), curve["warmup_steps"]))
    return power + start * np.exp(-steps / TRANSIENT_STEPS)


def _power(curve: dict, lr_area: np.ndarray) -> np.ndarray:
    return curve["E"] + curve["A"] * (TOKENS_PER_STEP * lr_area) ** -curve["alpha"]


def _lr_area(steps: np.ndarray, warmup: int) -> np.ndarray:
    """Summed LR (in units of its peak) up to each step, for a linear warm-up then constant."""
    if warmup == 0:
        return steps
    ramp = np.minimum(steps, warmup)
    return ramp * (ramp + 1) / (2 * warmup) + np.maximum(steps - warmup, 0)


def eval_steps(spacing: str) -> np.ndarray | None:
    if spacing == "every100":
        return None  # synthetic.write_run's default: log-spaced up to 100, then every 100
    count = int(spacing.removeprefix("log"))
    return np.unique(np.round(np.geomspace(1, STEPS, count)).astype(int))


def write_curve(curve: dict, path: Path) -> Path:
    from oneepoch.analysis.synthetic import write_run

    warmup = curve["warmup_steps"]

    def lr(s):
        s = np.asarray(s, dtype=float)
        return 1e-3 * (np.minimum(s / warmup, 1.0) if warmup else np.ones_like(s))

    return write_run(
        path,
        lambda tokens, steps: true_loss(curve, steps),
        total_steps=STEPS,
        eval_every=100,
        log_every=50,
        tokens_per_step=TOKENS_PER_STEP,
        lr=lr,
        warmup_steps=warmup,
        noise=curve["noise"],
        seed=curve["seed"],
        eval_steps=eval_steps(curve["spacing"]),
    )


def measure(run_dir: Path, truth: float | None, use_first: float, n_boot: int) -> dict:
    """The forecast of the final loss from the first ``use_first`` of the run, with its
    error against ``truth`` (default: the run's own last evaluation)."""
    from oneepoch.analysis.runfit import fit_run
    from oneepoch.analysis.runs import load_run

    run = load_run(run_dir)
    final = float(run.evals["val_loss"][-1]) if truth is None else truth
    start = time.perf_counter()
    rf = fit_run(run, use_first=use_first, n_boot=n_boot)
    pred = rf.predict_at(run.final_tokens)
    seconds = time.perf_counter() - start
    forecast = pred["forecast"]
    low = -np.inf if forecast["ci_low"] is None else forecast["ci_low"]
    high = np.inf if forecast["ci_high"] is None else forecast["ci_high"]
    return {
        "run": str(run_dir),
        "error": forecast["value"] / final - 1,
        "covered": bool(low <= final <= high),
        "weights": forecast["weights"],
        "warnings": forecast["warnings"],
        "errors_by_form": {n: est["value"] / final - 1 for n, est in pred["forms"].items()},
        "n_fit_points": rf.settings["n_fit_points"],
        "seconds": seconds,
    }


def summary(rows: list[dict]) -> str:
    err = np.array([r["error"] for r in rows])
    nofloor = np.array([r["errors_by_form"].get("power-nofloor", np.nan) for r in rows])
    cover = np.mean([r["covered"] for r in rows])
    return (
        f"{len(rows):>4} {np.median(np.abs(err)):>8.2%} {np.quantile(np.abs(err), 0.9):>8.2%} "
        f"{np.median(err):>+9.2%} {cover:>9.1%} {np.nanmedian(np.abs(nofloor)):>10.2%}"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="*", type=Path, metavar="RUN_DIR")
    p.add_argument("--seeds", default="0:300", help="synthetic seeds START:END (default 0:300)")
    p.add_argument("--use-first", type=float, default=0.3)
    p.add_argument("--bootstrap", type=int, default=200)
    p.add_argument("--json", type=Path, metavar="OUT", help="also write every result here")
    args = p.parse_args(argv)
    first, last = (int(v) for v in args.seeds.split(":"))

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(first, last):
            curve = draw_curve(seed)
            run = write_curve(curve, Path(tmp) / f"s{seed}")
            truth = float(true_loss(curve, [STEPS])[0])
            rows.append({**curve, **measure(run, truth, args.use_first, args.bootstrap)})
    real = [measure(run, None, args.use_first, args.bootstrap) for run in args.runs]

    print(
        f"final loss forecast from the first {args.use_first:.0%}: seeds {first}-{last - 1}, "
        f"{args.bootstrap} bootstrap replicates"
    )
    header = f"{'family':<18} {'n':>4} {'med|err|':>8} {'p90|err|':>8} {'med err':>9} "
    print(header + f"{'coverage':>9} {'nofloor':>10}")
    for name, levels in FACTORS.items():
        for level in levels:
            group = [r for r in rows if r[name] == level]
            if group:
                print(f"{f'{name}={level}':<18} {summary(group)}")
    if rows:
        print(f"{'overall':<18} {summary(rows)}")
    if real:
        print(f"{'project runs':<18} {summary(real)}")
        for r in real:
            print(f"  {r['run']}: {r['error']:+.2%}{'' if r['covered'] else ' (missed)'}")
    seconds = [r["seconds"] for r in rows + real]
    print(
        "coverage: of the 90% interval; nofloor: median |error| of power-nofloor, the old "
        f"forecast; fit + forecast took {np.median(seconds):.2f} s median, "
        f"{np.max(seconds):.2f} s max"
    )
    if args.json:
        args.json.write_text(json.dumps(rows + real, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
