"""Robust nonlinear fitting shared by the learning-curve and scaling-law fits.

Every fit minimises  sum_i w_i * huber(log_pred_i - log y_i; delta),  the objective of
Hoffmann et al. (2022) and Besiroglu et al. (2024): residuals live in log-loss space and
the Huber loss keeps a few bad points from steering the fit.

A model is any object with ``bounds`` (array [p, 2]) and ``log_pred_jac(theta)`` mapping a
batch of parameter vectors [B, p] to predictions [B, n] and their Jacobian [B, n, p]; it is
bound to its inputs, so only the observed ``log y`` and the weights vary between fits. That
lets one batched solver refit hundreds of bootstrap replicates at once.

- ``fit_multistart``: point estimate. The objective is evaluated on a whole grid of
  starts in one vectorised pass; L-BFGS-B runs from the most promising few, and the best
  result is polished by the batched Levenberg-Marquardt solver below.
- ``refine_batch``: Levenberg-Marquardt on the Huber objective (iteratively reweighted
  Gauss-Newton with damping), for B problems at once.
- ``bootstrap``: resample, refit every replicate warm-started from the point estimate.
- ``estimate``: percentile interval and standard error from the replicates.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Protocol

import numpy as np

DEFAULT_LEVEL = 0.9


class Model(Protocol):
    bounds: np.ndarray  # [p, 2] box for the internal parameters

    def log_pred_jac(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Log predictions [B, n] and their Jacobian [B, n, p] for theta [B, p]."""
        ...


def log_pred(model: Model, theta: np.ndarray) -> np.ndarray:
    """Predictions only; models may define a cheaper ``log_pred`` than the Jacobian path."""
    fn = getattr(model, "log_pred", None)
    if fn is not None:
        return fn(theta)
    return model.log_pred_jac(theta)[0]


def numeric_jac(
    fn, theta: np.ndarray, bounds: np.ndarray, free: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Central-difference Jacobian of a batched ``fn``, for models without an analytic one.

    All perturbed parameter vectors go through ``fn`` in one batch. ``free`` (bool [p]):
    differentiate in these coordinates only; the other columns are zero.
    """
    B, p = theta.shape
    cols = np.arange(p) if free is None else np.flatnonzero(free)
    k = cols.size
    h = 1e-6 * np.maximum(1.0, np.abs(theta))
    eye = np.eye(p)[cols][:, None, :]  # [k, 1, p]: perturb coordinate cols[i] in slice i
    up = np.minimum(theta + eye * h, bounds[:, 1])
    down = np.maximum(theta - eye * h, bounds[:, 0])
    values = fn(np.concatenate([theta, up.reshape(-1, p), down.reshape(-1, p)]))
    base = values[:B]
    f_up, f_down = values[B:].reshape(2, k, B, -1)
    width = (up - down)[np.arange(k), :, cols][..., None]  # [k, B, 1]
    jac = np.zeros((B, base.shape[-1], p))
    jac[:, :, cols] = ((f_up - f_down) / np.where(width > 0, width, 1.0)).transpose(1, 2, 0)
    return base, jac


def huber(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Huber loss, its derivative (psi) and the IRLS weight psi(r)/r."""
    a = np.abs(r)
    small = a <= delta
    rho = np.where(small, 0.5 * r * r, delta * (a - 0.5 * delta))
    psi = np.clip(r, -delta, delta)
    weight = np.where(small, 1.0, delta / np.maximum(a, delta))
    return rho, psi, weight


def objective(model: Model, theta, logy, delta: float, weights=None) -> np.ndarray:
    """Huber objective [B] for a batch of parameter vectors."""
    r = log_pred(model, np.atleast_2d(theta)) - logy
    rho = huber(r, delta)[0]
    if weights is not None:
        rho = rho * weights
    return np.where(np.isfinite(rho), rho, np.inf).sum(axis=-1)


def fit_multistart(
    model: Model,
    logy: np.ndarray,
    starts: np.ndarray,
    delta: float,
    n_polish: int = 4,
) -> tuple[np.ndarray, float]:
    """Best (theta, objective) over L-BFGS-B runs from the ``n_polish`` best grid starts."""
    from scipy.optimize import minimize

    lo, hi = model.bounds[:, 0], model.bounds[:, 1]
    starts = np.clip(np.atleast_2d(starts), lo, hi)
    grid_obj = objective(model, starts, logy, delta)
    order = np.argsort(grid_obj)[:n_polish]

    def fun(theta, scale):
        pred, jac = model.log_pred_jac(theta[None])
        rho, psi, _ = huber(pred[0] - logy, delta)
        return rho.sum() / scale, (psi @ jac[0]) / scale

    best_theta, best_obj = starts[order[0]], grid_obj[order[0]]
    with _one_blas_thread():
        for i in order:
            if not np.isfinite(grid_obj[i]):
                continue
            # L-BFGS-B's stopping rules are absolute below 1; scale the objective to ~1.
            # Loose tolerances suffice: Levenberg-Marquardt polishes the winner.
            scale = max(grid_obj[i], 1e-300)
            res = minimize(
                fun,
                starts[i],
                args=(scale,),
                jac=True,
                method="L-BFGS-B",
                bounds=model.bounds,
                options={"maxiter": 500, "ftol": 1e-10, "gtol": 1e-8},
            )
            obj = objective(model, res.x, logy, delta)[0]
            if obj < best_obj:
                best_theta, best_obj = res.x, obj
    polished = refine_batch(model, best_theta[None], logy, delta)[0]
    return polished, float(objective(model, polished, logy, delta)[0])


@contextlib.contextmanager
def _one_blas_thread():
    """Pin scipy's bundled OpenBLAS to one thread while L-BFGS-B runs.

    L-BFGS-B makes many BLAS calls on tiny arrays; on a busy 2-core machine OpenBLAS
    waking its thread pool for each made fits ~30x slower. This is what threadpoolctl
    does, without the dependency; where the library is not found it changes nothing.
    """
    lib = _scipy_openblas()
    if lib is None:
        yield
        return
    before = lib.scipy_openblas_get_num_threads()
    lib.scipy_openblas_set_num_threads(1)
    try:
        yield
    finally:
        lib.scipy_openblas_set_num_threads(before)


@functools.cache
def _scipy_openblas():
    import ctypes
    import glob
    import os

    import scipy

    for path in glob.glob(os.path.join(os.path.dirname(scipy.__file__) + ".libs", "*openblas*")):
        try:
            lib = ctypes.CDLL(path)
            lib.scipy_openblas_get_num_threads.restype = ctypes.c_int
            lib.scipy_openblas_set_num_threads.argtypes = [ctypes.c_int]
            return lib
        except (OSError, AttributeError):
            continue
    return None


def refine_batch(
    model: Model,
    theta0: np.ndarray,
    logy: np.ndarray,
    delta: float,
    weights: np.ndarray | None = None,
    max_iter: int = 100,
    rtol: float = 1e-10,
    free: np.ndarray | None = None,
) -> np.ndarray:
    """Minimise the (weighted) Huber objective for B problems at once by Levenberg-Marquardt.

    ``logy`` and ``weights`` are [n] (shared) or [B, n] (one row per problem). Each problem
    keeps its own damping; a step is kept only if it lowers that problem's objective, so
    the result is never worse than the start. ``free`` (bool [p]): only these coordinates
    move; the others keep each problem's starting value.
    """
    theta = np.array(theta0, dtype=float)
    B, p = theta.shape
    n = np.shape(logy)[-1]
    logy = np.broadcast_to(logy, (B, n))
    w = np.ones((B, n)) if weights is None else np.broadcast_to(weights, (B, n))
    lo, hi = model.bounds[:, 0], model.bounds[:, 1]

    pred, jac = model.log_pred_jac(theta)
    rho, psi, irls = huber(pred - logy, delta)
    f = (w * rho).sum(-1)
    damping = np.full(B, 1e-3)
    active = np.isfinite(f)
    for _ in range(max_iter):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        J, ww = jac[idx], w[idx]
        grad = np.einsum("bnp,bn->bp", J, ww * psi[idx])
        hess = np.einsum("bnp,bn,bnq->bpq", J, ww * irls[idx], J)
        if free is not None:
            grad, hess = _hold_fixed(grad, hess, free)
        diag = np.diagonal(hess, axis1=1, axis2=2)
        scale = np.maximum(diag, 1e-12 * np.maximum(diag.max(-1, keepdims=True), 1e-300))
        lhs = hess + damping[idx, None, None] * (scale[:, :, None] * np.eye(p))
        step = _solve(lhs, -grad[..., None])[..., 0]
        cand = np.clip(theta[idx] + step, lo, hi)
        c_pred, c_jac = model.log_pred_jac(cand)
        c_rho, c_psi, c_irls = huber(c_pred - logy[idx], delta)
        c_f = (ww * c_rho).sum(-1)
        better = np.isfinite(c_f) & (c_f < f[idx])

        gain = np.where(better, (f[idx] - c_f) / np.maximum(f[idx], 1e-300), 0.0)
        moved = np.abs(cand - theta[idx]).max(-1)
        keep = idx[better]
        theta[keep], f[keep] = cand[better], c_f[better]
        pred[keep], jac[keep] = c_pred[better], c_jac[better]
        psi[keep], irls[keep] = c_psi[better], c_irls[better]
        damping[idx] = np.where(better, damping[idx] / 3.0, damping[idx] * 4.0)

        done = (better & ((gain < rtol) | (moved < 1e-12))) | (damping[idx] > 1e12)
        active[idx[done]] = False
    return theta


def _solve(lhs: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Batched solve; a batch holding a singular system (a resample with fewer distinct
    points than parameters) is solved by least squares instead."""
    try:
        return np.linalg.solve(lhs, rhs)
    except np.linalg.LinAlgError:
        return np.stack([np.linalg.lstsq(a, b, rcond=None)[0] for a, b in zip(lhs, rhs)])


def _hold_fixed(grad, hess, free):
    """Gradient and Hessian whose fixed coordinates take a zero step."""
    fixed = ~np.asarray(free, dtype=bool)
    grad, hess = grad.copy(), hess.copy()
    grad[:, fixed] = 0.0
    hess[:, fixed, :] = 0.0
    hess[:, :, fixed] = 0.0
    hess[:, fixed, fixed] = 1.0
    return grad, hess


def newton_decrement(model: Model, theta: np.ndarray, logy, delta: float, free=None) -> float:
    """How much a Gauss-Newton step from ``theta`` would still lower the Huber objective,
    relative to the objective (floored at 1e-12, below which nothing is left to gain): ~0 at
    a minimum, large where an optimiser stopped early. Coordinates at a bound of the box,
    with the gradient pushing them out, are held."""
    pred, jac = model.log_pred_jac(np.atleast_2d(theta))
    _, psi, irls = huber(pred[0] - logy, delta)
    grad = jac[0].T @ psi
    hess = jac[0].T @ (irls[:, None] * jac[0])
    lo, hi = model.bounds[:, 0], model.bounds[:, 1]
    theta = np.ravel(theta)
    pinned = ((theta <= lo + 1e-9) & (grad > 0)) | ((theta >= hi - 1e-9) & (grad < 0))
    keep = ~pinned if free is None else (~pinned & np.asarray(free, dtype=bool))
    g, h = grad[keep], hess[np.ix_(keep, keep)]
    if g.size == 0:
        return 0.0
    step = np.linalg.lstsq(h, g, rcond=1e-12)[0]
    obj = float(objective(model, theta, logy, delta)[0])
    return float(0.5 * g @ step) / max(obj, 1e-12)


def bootstrap(
    model: Model,
    theta_hat: np.ndarray,
    logy: np.ndarray,
    delta: float,
    n_boot: int,
    rng: np.random.Generator,
    kind: str = "residual",
) -> np.ndarray:
    """Bootstrap replicates [n_boot, p] of the internal parameters.

    ``residual``: keep the design and add resampled residuals to the fitted curve. The
    residuals are the "modified residuals" of Davison & Hinkley (1997, alg. 6.3), divided
    by sqrt(1 - leverage) and centred, so their spread matches the noise rather than the
    fit's smaller residuals. Suits a learning curve, whose points sit at fixed, distinct t.
    ``pairs``: resample the data points with replacement (as multinomial weights on the
    original points), as Besiroglu et al. (2024) did for the Chinchilla fit.
    """
    if n_boot <= 0:
        return np.empty((0, theta_hat.size))
    n = logy.size
    start = np.tile(theta_hat, (n_boot, 1))
    if kind == "residual":
        fitted = log_pred(model, theta_hat[None])[0]
        logy_b = fitted + rng.choice(modified_residuals(model, theta_hat, logy), size=(n_boot, n))
        return refine_batch(model, start, logy_b, delta)
    if kind == "pairs":
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)
        return refine_batch(model, start, logy, delta, weights=counts)
    raise ValueError(f"unknown bootstrap kind {kind!r}")


def modified_residuals(model: Model, theta: np.ndarray, logy: np.ndarray) -> np.ndarray:
    """Residuals divided by sqrt(1 - leverage) and centred (Davison & Hinkley 1997, alg.
    6.3): their spread matches the noise rather than the fit's smaller residuals."""
    fitted, jac = model.log_pred_jac(theta[None])
    fitted, jac = fitted[0], jac[0]
    leverage = np.einsum("np,pq,nq->n", jac, np.linalg.pinv(jac.T @ jac), jac)
    resid = (logy - fitted) / np.sqrt(1.0 - np.minimum(leverage, 0.99))
    return resid - resid.mean()


def quantiles(samples: np.ndarray, probs) -> np.ndarray:
    """Harrell-Davis quantiles of 1-D samples: a beta-weighted average of all order
    statistics, much less noisy in the tails than a single order statistic, so a few
    hundred bootstrap replicates give stable 5% and 95% points. Samples with +inf (a
    target never reached) fall back to nearest-rank quantiles, which stay finite where
    they can.
    """
    from scipy.special import betainc

    x = np.sort(np.asarray(samples, dtype=float))
    if not np.all(np.isfinite(x)):
        return np.quantile(x, probs, method="nearest")
    n = x.size
    edges = np.arange(n + 1) / n
    out = []
    for p in np.atleast_1d(probs):
        weights = np.diff(betainc(p * (n + 1), (1 - p) * (n + 1), edges))
        out.append(weights @ x)
    return np.array(out)


def estimate(
    value: float, samples: np.ndarray, level: float = DEFAULT_LEVEL, df: int | None = None
) -> dict:
    """{"value", "ci_low", "ci_high", "se"}: the point estimate and percentile interval
    (Harrell-Davis quantiles of the bootstrap replicates).

    With ``df`` (residual degrees of freedom, n - p) each side of the interval is widened
    by t_df / z, the small-sample correction the bootstrap lacks: it estimates the noise
    from the same few residuals it resamples, as a Wald interval would with z instead of
    t. Infinite bounds (an unbounded interval) are returned as None so the dict is JSON.
    """
    samples = np.asarray(samples, dtype=float)
    samples = samples[~np.isnan(samples)]
    if samples.size == 0:
        return {"value": _finite_or_none(value), "ci_low": None, "ci_high": None, "se": None}
    lo, hi = quantiles(samples, [(1 - level) / 2, (1 + level) / 2])
    widen = t_over_z(level, df)
    if widen != 1.0 and np.isfinite(value):
        lo = value - (value - lo) * widen if lo <= value else lo
        hi = value + (hi - value) * widen if hi >= value else hi
    finite = samples[np.isfinite(samples)]
    se = float(np.std(finite, ddof=1)) if finite.size > 1 and finite.size == samples.size else None
    return {
        "value": _finite_or_none(value),
        "ci_low": _finite_or_none(lo),
        "ci_high": _finite_or_none(hi),
        "se": se * widen if se is not None else None,
    }


def t_over_z(level: float, df: int | None) -> float:
    """Ratio of Student-t to normal quantiles at a two-sided ``level`` (1 without df)."""
    if not df or df <= 0:
        return 1.0
    # scipy.special rather than scipy.stats: the latter probes sys.modules["torch"]
    from scipy.special import ndtri, stdtrit

    q = (1 + level) / 2
    return float(stdtrit(df, q) / ndtri(q))


def _finite_or_none(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None
