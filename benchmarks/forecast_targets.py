"""Issue 21's forecast targets, each judged against the sampling noise of its estimate.

A family of the synthetic benchmark holds 50-120 of 300 curves, and a setup of the tiny
runs one per seed: a family's median |error|, median signed error and coverage are
estimates of the rule's, from a sample whose spread is as large as the margins the targets
leave (the ratio of two medians over 75 curves lies anywhere from a third below to a half
above its value from one draw of curves to the next). So each is reported
with its 90% interval over the curves (a bootstrap of the curves, the rule and the oracle
resampled together; Wilson's interval for a coverage) and judged three ways:

- met: the estimate meets the target;
- noise: it does not, but its interval reaches the target, so another draw of curves
  could meet it (neither met nor refuted by these curves);
- MISSED: its interval lies wholly on the wrong side (a miss the draw cannot explain).
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

LEVEL = 0.90
RESAMPLES = 2000
ORACLE_RATIO = 1.25  # a family's median |error| at most this times the oracle's
SIGNED = 0.005  # a family's median signed error within +-0.5%
COVERAGE = (0.85, 0.95)  # of the 90% interval, per family
OVERALL = 0.012  # median |error| of all synthetic curves
RUNS_SIGNED = 0.01  # oneepoch's own runs: median signed error within +-1%
RUNS_ABS = 0.015  # ... median |error| at most 1.5%
RUNS_WIDTH_RATIO = 3.0  # ... median half-width at most 3x the median |error|


@dataclass(frozen=True)
class Judged:
    target: str
    estimate: float
    low: float
    high: float
    verdict: str  # "met", "noise" or "MISSED"
    unit: str  # "x" (a ratio), "%" or "+%" (a signed share), "%1" (a share to 0.1%)

    def __str__(self) -> str:
        spec = {"x": ".2f", "%": ".2%", "+%": "+.2%", "%1": ".1%"}[self.unit]
        suffix = "x" if self.unit == "x" else ""
        values = (format(v, spec) + suffix for v in (self.estimate, self.low, self.high))
        return "{} [{}, {}] {}".format(*values, self.verdict)


def family_targets(errors, covered, oracle_errors=None, seed: int = 0) -> list[Judged]:
    """A family's targets: its median |error| against the oracle's (when given), its median
    signed error and its coverage, each with its interval and verdict."""
    errors = np.asarray(errors, dtype=float)
    rng = np.random.default_rng(seed)
    out = []
    if oracle_errors is not None:
        oracle_abs = np.abs(np.asarray(oracle_errors, dtype=float))
        ratio = _bootstrap(
            lambda e, o: np.median(e, axis=-1) / np.median(o, axis=-1),
            (np.abs(errors), oracle_abs),
            rng,
        )
        out.append(_judge("rule/oracle", ratio, 0.0, ORACLE_RATIO, "x"))
    signed = _bootstrap(lambda e: np.median(e, axis=-1), (errors,), rng)
    out.append(_judge("signed", signed, -SIGNED, SIGNED, "+%"))
    out.append(_judge("coverage", _wilson(np.asarray(covered, dtype=bool)), *COVERAGE, "%1"))
    return out


def overall_target(errors, seed: int = 0) -> Judged:
    """Median |error| over all synthetic curves, at most 1.2%."""
    stat = _bootstrap(
        lambda e: np.median(e, axis=-1),
        (np.abs(np.asarray(errors, float)),),
        np.random.default_rng(seed),
    )
    return _judge("median |error|", stat, 0.0, OVERALL, "%")


def runs_targets(errors, widths, seed: int = 0) -> list[Judged]:
    """oneepoch's own runs: median signed error, median |error| and the median half-width
    of the 90% interval against the median |error|."""
    errors, half = np.asarray(errors, dtype=float), np.asarray(widths, dtype=float) / 2
    rng = np.random.default_rng(seed)
    signed = _bootstrap(lambda e: np.median(e, axis=-1), (errors,), rng)
    absolute = _bootstrap(lambda e: np.median(np.abs(e), axis=-1), (errors,), rng)
    ratio = _bootstrap(
        lambda e, h: np.median(h, axis=-1) / np.median(np.abs(e), axis=-1), (errors, half), rng
    )
    return [
        _judge("signed", signed, -RUNS_SIGNED, RUNS_SIGNED, "+%"),
        _judge("median |error|", absolute, 0.0, RUNS_ABS, "%"),
        _judge("half-width / median |error|", ratio, 0.0, RUNS_WIDTH_RATIO, "x"),
    ]


def _judge(target: str, stat: tuple[float, float, float], lo: float, hi: float, unit: str):
    """``stat`` (estimate, low, high) against the target's range [lo, hi]."""
    estimate, low, high = stat
    if lo <= estimate <= hi:
        verdict = "met"
    elif high < lo or low > hi:
        verdict = "MISSED"
    else:
        verdict = "noise"
    return Judged(target, float(estimate), float(low), float(high), verdict, unit)


def _bootstrap(stat, arrays, rng) -> tuple[float, float, float]:
    """The statistic on the curves and its percentile interval over RESAMPLES resamples of
    them (the arrays resampled together: the rule and the oracle on the same curves)."""
    n = len(arrays[0])
    idx = rng.integers(n, size=(RESAMPLES, n))
    draws = stat(*(a[idx] for a in arrays))
    tail = (1 - LEVEL) / 2
    low, high = np.quantile(draws[np.isfinite(draws)], [tail, 1 - tail])
    return float(stat(*(a[None, :] for a in arrays))[0]), float(low), float(high)


def _wilson(hits: np.ndarray) -> tuple[float, float, float]:
    """A share and its Wilson score interval (right at 0% and 100%, unlike the bootstrap)."""
    n, share = len(hits), float(np.mean(hits))
    z = NormalDist().inv_cdf(1 - (1 - LEVEL) / 2)
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return share, centre - half, centre + half
