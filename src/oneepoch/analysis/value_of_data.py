"""What more unique data is worth, under a data-constrained law fitted on this corpus.

Komatsuzaki's argument is economic: text is cheap, compute is not, so train once on more
data rather than many times on less. Given a law L(N, D, U) (Muennighoff et al.'s form, from
`oneepoch scaling fit --form data-constrained`), a budget C and a corpus of U unique tokens,
``value_of_data`` answers, for U, k U (k = 2, 4, 10) and unlimited unique tokens:

- the loss of the law's best run at this budget: min over N of L(N, C / fpt(N), U'), with
  its epochs D / U';
- the compute at which the law's best run on U' reaches the loss the law predicts for the
  reference run (the plan being made): what k times more text saves.

Each with the interval of the law's bootstrap replicates (the same quantity computed under
every replicate; percentile interval, widened to contain the point). Where the law could not
identify R_D* (it ended at a bound) every row that repetition enters gives no number; the
unlimited row, free of R_D*, still does.

Numerics: losses on a grid of 160 log-spaced N over seven decades from the smallest model
(parabolic refinement of the minimum in log N) and 121 log-spaced C over three decades
either side of the budget; the compute for a loss is interpolated in log C between grid
points 0.05 decades apart.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from oneepoch.analysis import robust
from oneepoch.analysis.scaling import ScalingLaw, predict_params

MULTIPLES = (2.0, 4.0, 10.0)
N_POINTS, N_DECADES = 160, 7.0
C_POINTS, C_DECADES = 121, 3.0
CHUNK = 40  # replicates evaluated at once (memory: CHUNK x N_POINTS x C_POINTS floats)


def value_of_data(
    law: ScalingLaw,
    flops: float,
    unique_tokens: float,
    flops_per_token: Callable[[float], float],
    smallest_params: float,
    reference: dict,
    level: float = robust.DEFAULT_LEVEL,
    multiples: tuple[float, ...] = MULTIPLES,
) -> dict:
    """The value-of-data table (see the module docstring) as a JSON-ready dict.

    ``flops_per_token(n)``: training FLOPs per token of a model of n parameters (the law's
    count); ``smallest_params``: the smallest model's count; ``reference``: the run the
    savings are measured against, {"params", "tokens", "unique_tokens", "flops"}.
    """
    if law.form != "data-constrained":
        raise ValueError("value_of_data needs a data-constrained law")
    params = point_and_replicates(law)
    reps = params[1:]

    n_grid = np.geomspace(smallest_params, smallest_params * 10**N_DECADES, N_POINTS)
    fpt = np.array([flops_per_token(float(n)) for n in n_grid])
    c_grid = flops * np.logspace(-C_DECADES, C_DECADES, C_POINTS)
    at_budget = C_POINTS // 2  # c_grid[at_budget] == flops

    ref = reference
    ref_loss = predict_params(
        "data-constrained", params, ref["params"], ref["tokens"], ref["unique_tokens"]
    )
    scenarios = [("the corpus", 1.0)] + [(f"{k:g}x", k) for k in multiples] + [("unlimited", None)]
    rows = []
    for label, k in scenarios:
        unique = None if k is None else k * unique_tokens
        best_loss, best_n = _best_over_n(params, n_grid, fpt, c_grid, unique)
        loss = best_loss[:, at_budget]
        n_star = best_n[:, at_budget]
        tokens = flops / np.interp(np.log(n_star), np.log(n_grid), fpt)
        reach = least_reaching(best_loss, c_grid, ref_loss)
        needs_r_d = k is not None
        blocked = needs_r_d and "R_D_star" in law.not_identified
        row = {
            "data": label,
            "multiple": k,
            "unique_tokens": unique,
            "identified": not blocked,
        }
        if blocked:
            row["note"] = "not identified: the law's R_D* ended at a bound"
            rows.append(row)
            continue
        row.update(
            params=estimate(n_star, level),
            tokens=estimate(tokens, level),
            epochs=estimate(tokens / unique, level) if unique else None,
            loss=estimate(loss, level),
            flops_for_reference_loss=estimate(reach, level),
            flops_ratio=estimate(reach / ref["flops"], level),
        )
        rows.append(row)
    return {
        "budget_flops": float(flops),
        "unique_tokens": float(unique_tokens),
        "reference": {
            **{k: float(v) for k, v in ref.items()},
            "epochs": float(ref["tokens"] / ref["unique_tokens"]),
            "loss": estimate(ref_loss, level),
        },
        "rows": rows,
        "n_bootstrap": int(len(reps)),
        "level": level,
        "not_identified": list(law.not_identified),
    }


def point_and_replicates(law: ScalingLaw) -> np.ndarray:
    """The law's parameters as rows: the point estimate first, then its bootstrap replicates
    (natural values, the form's order); what ``estimate`` takes a quantity computed on."""
    names = law.param_names()
    point = np.array([[law.params[k] for k in names]])
    reps = law.replicates if law.replicates is not None else np.empty((0, len(names)))
    return np.concatenate([point, reps])


def _best_over_n(params, n_grid, fpt, c_grid, unique):
    """(loss, N) of the law's best run at each compute: [B, C_POINTS] each."""
    D = c_grid[:, None] / fpt[None, :]  # [C, N]
    N = np.broadcast_to(n_grid[None, :], D.shape)
    U = None if unique is None else np.full(D.shape, float(unique))
    losses, sizes = [], []
    for start in range(0, len(params), CHUNK):
        chunk = params[start : start + CHUNK]
        with np.errstate(over="ignore", invalid="ignore"):
            L = predict_params("data-constrained", chunk, N, D, U)  # [b, C, N]
        L = np.where(np.isfinite(L) & (D[None] >= 1.0), L, np.inf)
        loss, log_n = _parabolic_min(L, np.log(n_grid))
        losses.append(loss)
        sizes.append(np.exp(log_n))
    return np.concatenate(losses), np.concatenate(sizes)


def _parabolic_min(L: np.ndarray, x: np.ndarray):
    """Minimum over the last axis of L(x) on an even grid x, refined by the parabola through
    the lowest point and its neighbours (at an end of the grid, the end itself)."""
    best = np.argmin(L, axis=-1)
    i = np.clip(best, 1, x.size - 2)
    take = np.take_along_axis
    y0, y1, y2 = (take(L, (i + d)[..., None], axis=-1)[..., 0] for d in (-1, 0, 1))
    curv = y0 - 2 * y1 + y2
    with np.errstate(invalid="ignore", divide="ignore"):
        shift = np.where(curv > 0, 0.5 * (y0 - y2) / curv, 0.0)
    shift = np.clip(np.nan_to_num(shift), -1.0, 1.0)
    refined = np.minimum(y1 - 0.25 * (y0 - y2) * shift, y1)
    interior = (best == i) & np.isfinite(refined)
    loss = np.where(interior, refined, np.min(L, axis=-1))
    log_n = np.where(interior, x[i] + shift * (x[1] - x[0]), x[best])
    return loss, log_n


def least_reaching(curves: np.ndarray, grid: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per row of ``curves`` (a loss falling along the log-spaced ``grid``), the least grid
    value at which it reaches that row's ``target``, interpolated in log; +inf where the
    grid's end does not reach it, the grid's start where that already does."""
    out = np.full(len(curves), np.inf)
    log_x = np.log(grid)
    for b, (curve, goal) in enumerate(zip(curves, target)):
        below = np.flatnonzero(curve <= goal)
        if below.size == 0:
            continue
        j = below[0]
        if j == 0:
            out[b] = grid[0]
            continue
        hi, lo = curve[j - 1], curve[j]
        frac = (hi - goal) / (hi - lo) if hi > lo else 0.0
        out[b] = float(np.exp(log_x[j - 1] + frac * (log_x[j] - log_x[j - 1])))
    return out


def estimate(values: np.ndarray, level: float = robust.DEFAULT_LEVEL) -> dict:
    """Point (row 0) and the replicates' percentile interval, widened to contain it."""
    est = robust.estimate(float(values[0]), np.asarray(values[1:], dtype=float), level)
    value = est["value"]
    if value is not None:
        if est["ci_low"] is not None and est["ci_low"] > value:
            est["ci_low"] = value
        if est["ci_high"] is not None and est["ci_high"] < value:
            est["ci_high"] = value
    return est


PENALTIES = (0.01, 0.05)
EPOCH_GRID = np.geomspace(1.0, 1000.0, 601)


def epochs_affordable(
    law: ScalingLaw,
    params: float,
    unique_tokens: float,
    penalties: tuple[float, ...] = PENALTIES,
    level: float = robust.DEFAULT_LEVEL,
) -> dict:
    """How many epochs of ``unique_tokens`` a model of ``params`` parameters can take before
    the law's loss exceeds that of the same tokens all fresh by each of ``penalties``:
    the largest E with L(N, E U, U) <= (1 + p) L(N, E U, E U). {"penalties": [{"penalty",
    "epochs": estimate or None, "note"}], ...}; epochs past 1,000 count as unbounded."""
    P = point_and_replicates(law)
    D = EPOCH_GRID * unique_tokens
    repeated = predict_params("data-constrained", P, params, D, unique_tokens)
    fresh = predict_params("data-constrained", P, params, D, D)
    excess = repeated / fresh - 1.0  # [B, E], nondecreasing in E
    out = []
    for p in penalties:
        row = {"penalty": p}
        if "R_D_star" in law.not_identified:
            row["note"] = "not identified: the law's R_D* ended at a bound"
            row["epochs"] = None
        else:
            row["epochs"] = estimate(_crossing(excess, p), level)
        out.append(row)
    return {"params": float(params), "unique_tokens": float(unique_tokens), "penalties": out}


def _crossing(excess: np.ndarray, p: float) -> np.ndarray:
    """Per row, the epochs at which ``excess`` first exceeds ``p`` (log-linear; inf if never)."""
    out = np.full(len(excess), np.inf)
    log_e = np.log(EPOCH_GRID)
    for b, curve in enumerate(excess):
        over = np.flatnonzero(curve > p)
        if over.size == 0:
            continue
        j = over[0]
        if j == 0:
            out[b] = 1.0
            continue
        lo, hi = curve[j - 1], curve[j]
        frac = (p - lo) / (hi - lo) if hi > lo else 0.0
        out[b] = float(np.exp(log_e[j - 1] + frac * (log_e[j] - log_e[j - 1])))
    return out
