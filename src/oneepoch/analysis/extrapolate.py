"""Reading a loss curve forwards: the loss at a given t, and the first t reaching a loss.

Works on observed curves (eval points) and on fitted ones (a dense grid of the fitted
curve and of every bootstrap replicate). Between points the curve is interpolated
linearly in log-log space; a target counts as reached at the first point at or below it.
"""

from __future__ import annotations

import numpy as np

from oneepoch.analysis import robust
from oneepoch.analysis.curves import CurveFit

GRID_POINTS = 3000
HORIZON = 1e6  # search for a target up to this many times the last fitted t


def first_crossing(loss: np.ndarray, target: float) -> tuple[np.ndarray, np.ndarray]:
    """Where each row of ``loss`` [R, G] first reaches ``target``.

    Returns (index, fraction): the first point j at or below target (-1 if none) and how
    far, in log loss, the crossing lies between point j-1 (0) and point j (1).
    """
    loss = np.atleast_2d(loss)
    below = loss <= target
    hit = below.any(axis=1)
    j = np.argmax(below, axis=1)
    rows = np.arange(loss.shape[0])
    before, at = np.log(loss[rows, np.maximum(j - 1, 0)]), np.log(loss[rows, j])
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(before > at, (before - np.log(target)) / (before - at), 1.0)
    frac = np.where(j == 0, 1.0, np.clip(frac, 0.0, 1.0))
    return np.where(hit, j, -1), frac


def value_at_crossing(values: np.ndarray, index: np.ndarray, frac: np.ndarray) -> np.ndarray:
    """Interpolate ``values`` ([G] or [R, G]) at crossings; +inf where never reached.

    Interpolation is linear in log(value) (log-log together with the log-loss fraction),
    or linear where a value is not positive (a wall clock starting at 0).
    """
    values = np.atleast_2d(np.asarray(values, dtype=float))
    values = np.broadcast_to(values, (index.size, values.shape[-1]))
    rows = np.arange(index.size)
    j = np.maximum(index, 0)
    a, b = values[rows, np.maximum(j - 1, 0)], values[rows, j]
    with np.errstate(divide="ignore", invalid="ignore"):
        logged = np.exp(np.log(a) + frac * (np.log(b) - np.log(a)))
    out = np.where((a > 0) & (b > 0), logged, a + frac * (b - a))
    return np.where(index >= 0, out, np.inf)


def predict_loss(fit: CurveFit, x: float) -> dict:
    """The fitted loss at x (in the fit's units) with its bootstrap interval."""
    point = fit.predict([x])[0]
    samples = fit.predict_samples([x])[:, 0]
    return robust.estimate(point, samples, fit.level, fit.interval_df)


def x_to_reach(fit: CurveFit, target: float) -> tuple[np.ndarray, np.ndarray]:
    """First x at which the fitted curve, and each bootstrap replicate, reaches ``target``.

    Returns (point, samples); inf where the curve stays above the target up to HORIZON
    times the last fitted x (a target below the fitted floor is never reached).
    """
    grid = np.geomspace(fit.x[0], fit.x[-1] * HORIZON, GRID_POINTS)
    curves = np.vstack([fit.predict(grid)[None], fit.predict_samples(grid)])
    index, frac = first_crossing(curves, target)
    crossing = value_at_crossing(grid, index, frac)
    return crossing[0], crossing[1:]
