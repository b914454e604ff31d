"""Learning-curve forms and their robust fit with bootstrap intervals.

- ``power``: L(t) = E + A * t^(-alpha), the form of Komatsuzaki (2019) and Kaplan et al.
  (2020), with t in tokens or steps.
- ``schedule``: L(s) = L0 + A * S1(s)^(-alpha) - C * S2(s), Tissue et al. (2024), with the
  LR areas S1, S2 of ``lr_schedule.LRSchedule`` at the step s reached at t.

Both are fitted in log-loss space with the Huber loss (``robust``). Internally the power
term is written at a reference point, A_ref = A * t_ref^(-alpha) with t_ref the geometric
mean of the fitted t, which decorrelates A from alpha and keeps the solvers well
conditioned; reported parameters are in the data's own units.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from oneepoch.analysis import robust
from oneepoch.analysis.lr_schedule import LRSchedule

# Box for the internal parameters; the loss of any real run sits well inside it.
_LOG_LEVEL = (-14.0, 7.0)  # log of E, L0 or A_ref (loss units: nats)
_ALPHA = (1e-4, 4.0)
# The schedule form fits its annealing coefficient C only when the LR fell by at least
# this fraction of its peak within the fitted range, and by at least MIN_SHARE_OF_FALL_TO_FIT_C
# of the whole fall its schedule plans: fitted on the first part of a decay, C
# extrapolated over the rest forecast losses 2-36% too low on real cosine and linear runs
# (docs/analysis.md, "The live forecast under a decaying LR").
MIN_DECAY_TO_FIT_C = 0.3
MIN_SHARE_OF_FALL_TO_FIT_C = 2 / 3
# A floor-averaged fit (``fit_curve(..., floor="averaged")``) holds the floor at this many
# values; the floor is every form's first parameter.
FLOOR_GRID = 40
# A form without a floor holds log E (or log L0) at the bottom of the box: E ~ 1e-6 nats.
_NO_FLOOR = float(np.exp(_LOG_LEVEL[0]))


def _level_box(floor: bool) -> tuple[float, float]:
    return _LOG_LEVEL if floor else (_LOG_LEVEL[0], _LOG_LEVEL[0])


def param_names(all_params: tuple[str, ...], floor: bool) -> tuple[str, ...]:
    """A form's reported parameters: all of them, or without the floor (always first)."""
    return all_params if floor else all_params[1:]


class PowerForm:
    """L = E + A * t^(-alpha); with ``floor=False``, L = A * t^(-alpha) (E held at ~0)."""

    ALL_PARAMS = ("E", "A", "alpha")

    def __init__(self, t_ref: float, floor: bool = True):
        self.t_ref, self.floor = float(t_ref), floor
        self.name = "power" if floor else "power-nofloor"
        self.formula = "L = E + A * t^(-alpha)" if floor else "L = A * t^(-alpha)"
        self.param_names = param_names(self.ALL_PARAMS, floor)
        self.bounds = np.array([_level_box(floor), _LOG_LEVEL, _ALPHA])

    def model(self, x) -> _PowerModel:
        return _PowerModel(np.log(np.asarray(x, dtype=float) / self.t_ref), self.bounds)

    def starts(self, x, loss) -> np.ndarray:
        floor_frac, alphas = np.meshgrid([0.01, 0.5, 0.8, 0.95], [0.05, 0.2, 0.5, 1.0])
        E = floor_frac.ravel() * loss.min() if self.floor else np.full(floor_frac.size, _NO_FLOOR)
        alpha = alphas.ravel()
        # A_ref chosen so each start passes through the median point
        mid = len(x) // 2
        excess = np.maximum(loss[mid] - E, 1e-3 * loss[mid])
        a_ref = np.log(excess) + alpha * np.log(x[mid] / self.t_ref)
        starts = np.column_stack([np.log(E), a_ref, alpha])
        return np.unique(starts, axis=0)

    def params(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        theta = np.atleast_2d(theta)
        alpha = theta[:, 2]
        out = {
            "E": np.exp(theta[:, 0]),
            "A": np.exp(theta[:, 1] + alpha * np.log(self.t_ref)),
            "alpha": alpha,
        }
        return {k: out[k] for k in self.param_names}


class _PowerModel:
    """log L = logaddexp(log E, log A_ref - alpha * z), z = log(t / t_ref)."""

    def __init__(self, z: np.ndarray, bounds: np.ndarray):
        self.z, self.bounds = z, bounds

    def log_pred_jac(self, theta):
        e, a, alpha = (theta[:, k, None] for k in range(3))
        term = a - alpha * self.z
        lp = np.logaddexp(e, term)
        share_e, share_t = np.exp(e - lp), np.exp(term - lp)
        return lp, np.stack([share_e, share_t, -self.z * share_t], axis=-1)


class ScheduleForm:
    """L = L0 + A * S1^(-alpha) - C * S2; with ``floor=False`` L0 is held at ~0."""

    ALL_PARAMS = ("L0", "A", "alpha", "C")

    def __init__(self, schedule: LRSchedule, x_to_steps: Callable, fit_x, floor: bool = True):
        self.schedule, self.x_to_steps, self.floor = schedule, x_to_steps, floor
        self.name = "schedule" if floor else "schedule-nofloor"
        self.formula = f"L = {'L0 + ' if floor else ''}A * S1^(-alpha) - C * S2"
        self.param_names = param_names(self.ALL_PARAMS, floor)
        steps = x_to_steps(fit_x)
        s1, s2 = schedule.areas(steps)
        self.s1_ref = float(np.exp(np.mean(np.log(np.maximum(s1, 1e-12)))))
        self.s2_ref = float(s2.max()) if s2.max() > 0 else 1.0
        # C is measured from how the loss responds to LR decay. With none in the fitted
        # range it cannot be told from L0; with a little (the first part of a cosine run)
        # any C fits and extrapolating it can predict any loss, even a negative one. Below
        # MIN_DECAY_TO_FIT_C of the peak's drop, C is fixed at 0 and ``c_note`` says why.
        lowest = schedule.lowest_fraction(steps.min(), steps.max()) if steps.size else 1.0
        self.c_fixed = not self.measures_c(fit_x)
        # The run anneals, but not where the fit can see it: predictions past the range
        # lack the annealing term (see RunFit's forecast).
        self.annealing_unmeasured = self.c_fixed and not schedule.constant
        self.c_note = None
        if self.c_fixed:
            self.c_note = (
                f"C fixed at 0: the LR fell only to {lowest:.0%} of its peak in the fitted "
                f"range (C needs a fall of {MIN_DECAY_TO_FIT_C:.0%} of the peak and "
                f"{MIN_SHARE_OF_FALL_TO_FIT_C:.0%} of the planned fall), so any later "
                "annealing bonus is left out of its predictions"
                if s2.max() > 0
                else "C fixed at 0: no LR decay in the fitted range"
            )
        c_box = (0.0, 0.0) if self.c_fixed else (0.0, 1e3)
        self.bounds = np.array([_level_box(floor), _LOG_LEVEL, _ALPHA, c_box])

    def measures_c(self, fit_x) -> bool:
        """Whether a fit to ``fit_x`` sees enough LR decay to fit C: a fall of
        MIN_DECAY_TO_FIT_C of the peak, and MIN_SHARE_OF_FALL_TO_FIT_C of the planned fall."""
        steps = self.x_to_steps(np.asarray(fit_x, dtype=float))
        if steps.size == 0 or self.schedule.areas(steps.max())[1] <= 0:
            return False
        fall = 1.0 - self.schedule.lowest_fraction(steps.min(), steps.max())
        planned = 1.0 - self.schedule.lowest_fraction(0.0, np.inf)
        return fall >= max(MIN_DECAY_TO_FIT_C, MIN_SHARE_OF_FALL_TO_FIT_C * planned)

    def model(self, x) -> _ScheduleModel:
        s1, s2 = self.schedule.areas(self.x_to_steps(x))
        u = np.maximum(s1 / self.s1_ref, 1e-12)
        return _ScheduleModel(np.log(u), s2 / self.s2_ref, self.bounds)

    def starts(self, x, loss) -> np.ndarray:
        s1 = self.schedule.areas(self.x_to_steps(x))[0]
        power = PowerForm(self.s1_ref, self.floor).starts(s1, loss)
        drops = [0.0] if self.c_fixed else [0.0, 0.02 * loss.min(), 0.1 * loss.min()]
        return np.array([[*row, c] for row in power for c in drops])

    def params(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        theta = np.atleast_2d(theta)
        # the power part is PowerForm's in S1, its floor named L0 here
        power = PowerForm(self.s1_ref, floor=True).params(theta[:, :3])
        out = {"L0": power["E"], "A": power["A"], "alpha": power["alpha"]}
        out["C"] = theta[:, 3] / self.s2_ref
        return {k: out[k] for k in self.param_names}


class _ScheduleModel:
    """L = L0 + A_ref * u^(-alpha) - C_ref * v with u = S1 / S1_ref, v = S2 / S2_ref."""

    def __init__(self, log_u: np.ndarray, v: np.ndarray, bounds: np.ndarray):
        self.log_u, self.v, self.bounds = log_u, v, bounds

    def log_pred_jac(self, theta):
        l0, a, alpha, c = (theta[:, k, None] for k in range(4))
        level = np.exp(l0)
        power = np.exp(a - alpha * self.log_u)
        # A negative prediction is a bad parameter vector: give it a huge, finite residual.
        pred = np.maximum(level + power - c * self.v, 1e-12)
        columns = np.broadcast_arrays(level, power, -self.log_u * power, -self.v)
        return np.log(pred), np.stack(columns, axis=-1) / pred[..., None]


@dataclass
class CurveFit:
    """A fitted form: point estimate, bootstrap replicates, and what they imply."""

    form: PowerForm | ScheduleForm
    x: np.ndarray
    loss: np.ndarray
    theta: np.ndarray
    boot: np.ndarray
    delta: float
    objective: float
    level: float
    # Misspecification beyond the fitted range: the log-error a form makes per unit of
    # log-distance past its last point, measured by backtests (``with_drift``); 0 until set.
    drift: float = 0.0
    drift_draws: np.ndarray | None = None  # one standard normal per bootstrap replicate
    # A floor-averaged fit (``fit_curve(..., floor="averaged")``): the fits with the floor
    # held at each value of a grid [K, p] and how much each counts [K]; its prediction is
    # their weighted geometric mean. None for a plain fit (``theta`` alone).
    mixture: tuple[np.ndarray, np.ndarray] | None = None

    def predict(self, x) -> np.ndarray:
        if self.mixture is not None:
            thetas, weights = self.mixture
            return np.exp(weights @ robust.log_pred(self.form.model(x), thetas))
        return np.exp(robust.log_pred(self.form.model(x), self.theta[None])[0])

    def predict_samples(self, x) -> np.ndarray:
        """Bootstrap predictions [n_boot, len(x)]. Past the last fitted point each
        replicate also drifts by exp(drift * z * log(x / x_last)), z ~ N(0, 1): the
        bootstrap only knows the noise, while far out the form itself is the larger error.
        A floor-averaged fit's replicates know more: they hold the spread over floors,
        much of what its backtest measured, so they drift only by what that spread lacks
        (in variance: (drift * log(x / x_last))^2 less their own; docs/analysis.md)."""
        log_samples = robust.log_pred(self.form.model(x), self.boot)
        if self.drift > 0 and self.drift_draws is not None:
            past = np.maximum(np.log(np.asarray(x, dtype=float) / self.x[-1]), 0.0)
            spread = self.drift * past
            if self.mixture is not None and len(self.boot) > 1:
                spread = np.sqrt(np.maximum(spread**2 - np.var(log_samples, axis=0), 0.0))
            log_samples = log_samples + self.drift_draws[:, None] * spread[None]
        return np.exp(log_samples)

    def with_drift(self, drift: float, rng: np.random.Generator) -> CurveFit:
        self.drift = float(drift)
        self.drift_draws = rng.standard_normal(len(self.boot))
        return self

    def predict_prefixes(self, counts, x) -> np.ndarray:
        """Log predictions at ``x`` [len(counts), len(x)] of this fit refitted on the first
        m points, for each m in ``counts`` (the backtests). A floor-averaged fit averages
        again over its floors, each weighed by how well it fits those m points."""
        model = self.form.model(x)
        if self.mixture is None:
            return robust.log_pred(model, self.refit_prefixes(counts))
        thetas = self.mixture[0]
        counts = np.asarray(counts, dtype=int)
        out = np.empty((counts.size, np.size(x)))
        fitted, logy = self.form.model(self.x), np.log(self.loss)
        for i, m in enumerate(counts):
            weights = (np.arange(self.x.size) < m).astype(float)
            refits = robust.refine_batch(
                fitted, thetas, logy, self.delta, weights=weights, free=_free_but_floor(thetas)
            )
            objective = robust.objective(fitted, refits, logy, self.delta, weights)
            out[i] = floor_weights(objective, m - self.n_free) @ robust.log_pred(model, refits)
        return out

    @property
    def n_free(self) -> int:
        return int(np.sum(self.form.bounds[:, 1] > self.form.bounds[:, 0]))

    def refit_prefixes(self, counts) -> np.ndarray:
        """Parameters [len(counts), p] refitted on the first m points for each m in
        ``counts``, as one batch: zero weights hide the later points, and each refit starts
        from this fit (Levenberg-Marquardt, like the bootstrap), which costs one batched
        solve instead of a multi-start fit per m. A schedule form whose prefix shows too
        little LR decay to measure C (``measures_c``) has C held at 0 there, as a fit to
        that prefix alone would."""
        counts = np.asarray(counts, dtype=int)
        out = np.empty((counts.size, self.theta.size))
        if counts.size == 0:
            return out
        logy = np.log(self.loss)
        model = self.form.model(self.x)
        measures_c = getattr(self.form, "measures_c", None)
        hold_c = np.array([measures_c is not None and not measures_c(self.x[:m]) for m in counts])
        for hold in (False, True):
            rows = np.flatnonzero(hold_c == hold)
            if rows.size == 0:
                continue
            bounds = self.form.bounds.copy()
            if hold:
                bounds[-1] = 0.0  # C, the schedule form's last parameter
            start = np.clip(np.tile(self.theta, (rows.size, 1)), bounds[:, 0], bounds[:, 1])
            weights = (np.arange(self.x.size)[None, :] < counts[rows, None]).astype(float)
            out[rows] = robust.refine_batch(
                _Bounded(model, bounds), start, logy, self.delta, weights=weights
            )
        return out

    @property
    def residuals(self) -> np.ndarray:
        return np.log(self.loss) - np.log(self.predict(self.x))

    def params(self) -> dict[str, dict]:
        point = self.form.params(self.theta)
        samples = self.form.params(self.boot)
        df = self.interval_df
        return {k: robust.estimate(point[k][0], samples[k], self.level, df) for k in point}

    @property
    def df(self) -> int:
        """Residual degrees of freedom, for the small-sample widening of intervals."""
        return max(self.x.size - self.n_free, 1)

    @property
    def interval_df(self) -> int | None:
        """The df by which intervals from the replicates are widened; None where the
        replicates are widened already (a floor-averaged fit's)."""
        return None if self.mixture is not None else self.df

    def goodness(self) -> dict:
        r = self.residuals
        fitted = self.predict(self.x)
        ss_tot = float(np.sum((self.loss - self.loss.mean()) ** 2))
        lag1 = float(np.corrcoef(r[:-1], r[1:])[0, 1]) if r.size > 3 and np.std(r) > 0 else None
        return {
            "n_points": int(r.size),
            "n_params": len(self.form.param_names),
            "rmse_log": float(np.sqrt(np.mean(r**2))),
            "max_abs_rel_error": float(np.max(np.abs(self.loss / fitted - 1))),
            "r2": 1.0 - float(np.sum((self.loss - fitted) ** 2)) / ss_tot if ss_tot > 0 else None,
            "noise_sigma_log": noise_sigma(np.log(self.loss)),
            "residual_lag1_autocorr": lag1,
            "huber_delta": self.delta,
            "objective": self.objective,
        }

    def valid_range(self) -> dict:
        """The longest run of consecutive points where the form describes the curve.

        A point fits when the mean of the residuals around it (itself and its neighbours)
        is within 3 standard errors of zero, the noise measured from the data alone
        (``noise_sigma``), so a misspecified form cannot hide its bend by inflating it. A
        single outlier does not end the run; a systematic departure does.
        """
        r = self.residuals
        sigma = max(noise_sigma(np.log(self.loss)), 3e-5)
        window = np.ones(3)
        counts = np.convolve(np.ones_like(r), window, mode="same")
        mean = np.convolve(r, window, mode="same") / counts
        ok = np.abs(mean) <= 3 * sigma / np.sqrt(counts)
        lo, hi = longest_true_run(ok)
        if hi == lo:
            return {"t_min": None, "t_max": None, "decades": 0.0, "n_points": 0}
        t_min, t_max = float(self.x[lo]), float(self.x[hi - 1])
        return {
            "t_min": t_min,
            "t_max": t_max,
            "decades": float(np.log10(t_max / t_min)),
            "n_points": int(hi - lo),
        }

    def to_json(self) -> dict:
        return {
            "formula": self.form.formula,
            "params": self.params(),
            "goodness": self.goodness(),
            "valid_range": self.valid_range(),
            "n_bootstrap": int(len(self.boot)),
            "notes": [note for note in (getattr(self.form, "c_note", None),) if note],
        }


def fit_curve(
    form: PowerForm | ScheduleForm,
    x: np.ndarray,
    loss: np.ndarray,
    *,
    n_boot: int = 200,
    level: float = robust.DEFAULT_LEVEL,
    rng: np.random.Generator | None = None,
    delta: float | str = "auto",
    floor: str = "fitted",
) -> CurveFit:
    """Huber fit in log space from a grid of starts, then a residual bootstrap.

    ``delta="auto"`` first fits with Hoffmann et al.'s delta = 1e-3, then refits with
    Huber's classic 1.345 * sigma, sigma the robust (MAD) spread of those residuals: close
    to least squares on well-behaved curves, while a spike still cannot pull the fit.
    ``floor="averaged"``: a floored form's floor averaged over the values the curve allows
    (``_fit_floor_averaged``) instead of fitted.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    x, loss = np.asarray(x, dtype=float), np.asarray(loss, dtype=float)
    if floor == "averaged":
        return _fit_floor_averaged(form, x, loss, n_boot, level, rng)
    if floor != "fitted":
        raise ValueError(f"floor must be 'fitted' or 'averaged', not {floor!r}")
    model, logy = form.model(x), np.log(loss)
    first_delta = 1e-3 if delta == "auto" else float(delta)
    theta, obj = robust.fit_multistart(model, logy, form.starts(x, loss), first_delta)
    if delta == "auto":
        resid = logy - robust.log_pred(model, theta[None])[0]
        delta = max(1.345 * _robust_sigma(resid), 1e-6)
        theta = robust.refine_batch(model, theta[None], logy, delta)[0]
        obj = float(robust.objective(model, theta, logy, delta)[0])
    boot = robust.bootstrap(model, theta, logy, delta, n_boot, rng, kind="residual")
    return CurveFit(form, x, loss, theta, boot, float(delta), obj, level)


def _fit_floor_averaged(form, x: np.ndarray, loss: np.ndarray, n_boot: int, level: float, rng):
    """A floored form with its floor averaged over the values the curve allows.

    From the first part of a run the floor (E, L0) is barely identified: fits with very
    different floors describe the points about equally well, yet forecast different losses
    (the fit without a floor too low where the curve saturates, the best fit's floor often
    at either end of its range). So the floor is held at each of FLOOR_GRID values spread
    evenly over [0, the lowest loss) (a flat prior), the other parameters are fitted at
    each, and the forecast is the mean of their log predictions, each weighed by its
    likelihood exp(-(objective - best) / sigma^2), sigma^2 = 2 best / (n - p) (for the
    Huber objective near least squares): a floor the points pin down dominates, one they
    do not is averaged over. Bootstrap replicates: each draws a floor by those weights and
    refits the rest to the curve's fitted values plus resampled residuals, scaled by
    t_df / z with df = n minus the parameters fitted at a held floor: the small-sample
    widening (``robust.estimate``) of the noise, not of the spread over floors, which is
    the average's own.
    """
    best = fit_curve(form, x, loss, n_boot=0, level=level)
    model, logy = form.model(x), np.log(loss)
    floors = np.log((np.arange(FLOOR_GRID) + 0.5) / FLOOR_GRID * loss.min())
    # each floor starts from the best of the form's own starting grid with that floor
    starts = form.starts(x, loss)
    grid = np.repeat(starts[None], floors.size, axis=0)
    grid[:, :, 0] = floors[:, None]
    grid = np.clip(grid, form.bounds[:, 0], form.bounds[:, 1]).reshape(-1, starts.shape[1])
    start_obj = robust.objective(model, grid, logy, best.delta).reshape(floors.size, -1)
    first = grid.reshape(floors.size, -1, starts.shape[1])[
        np.arange(floors.size), np.argmin(start_obj, axis=1)
    ]
    thetas = robust.refine_batch(model, first, logy, best.delta, free=_free_but_floor(first))
    objective = robust.objective(model, thetas, logy, best.delta)
    weights = floor_weights(objective, x.size - best.n_free)
    theta = thetas[np.argmax(weights)]
    boot = np.empty((0, theta.size))
    if n_boot > 0:
        pick = rng.choice(floors.size, size=n_boot, p=weights)
        resid = robust.modified_residuals(model, theta, logy)
        resid *= robust.t_over_z(level, max(x.size - best.n_free + 1, 1))
        logy_b = robust.log_pred(model, thetas)[pick] + rng.choice(resid, size=(n_boot, x.size))
        boot = robust.refine_batch(
            model, thetas[pick], logy_b, best.delta, free=_free_but_floor(thetas)
        )
    obj = float(robust.objective(model, theta, logy, best.delta)[0])
    return CurveFit(form, x, loss, theta, boot, best.delta, obj, level, mixture=(thetas, weights))


def _free_but_floor(thetas: np.ndarray) -> np.ndarray:
    """The mask of every parameter but the floor (every form's first parameter)."""
    return np.arange(thetas.shape[-1]) != 0


def floor_weights(objective: np.ndarray, df: int) -> np.ndarray:
    """Likelihood weights of fits with their floors held, from their Huber objectives."""
    ok = np.isfinite(objective)
    if not ok.any():
        return np.full(objective.size, 1.0 / objective.size)
    best = objective[ok].min()
    scale = max(2.0 * best / max(df, 1), 1e-12)
    weights = np.where(ok, np.exp(-(np.where(ok, objective, best) - best) / scale), 0.0)
    return weights / weights.sum()


def noise_sigma(values: np.ndarray) -> float:
    """Noise level of a smooth sequence, without a model: the robust spread of its second
    differences, which remove any locally linear trend; iid noise of sd sigma gives second
    differences of sd sqrt(6) sigma."""
    if values.size < 4:
        return 0.0
    return _robust_sigma(np.diff(values, 2)) / np.sqrt(6.0)


def _robust_sigma(r: np.ndarray) -> float:
    return float(1.4826 * np.median(np.abs(r - np.median(r))))


class _Bounded:
    """A model with another box for its parameters (e.g. one held fixed)."""

    def __init__(self, model, bounds: np.ndarray):
        self.model, self.bounds = model, bounds

    def log_pred_jac(self, theta):
        return self.model.log_pred_jac(theta)


def longest_true_run(mask) -> tuple[int, int]:
    """(lo, hi): the longest stretch mask[lo:hi] that is all True ((0, 0) when none)."""
    best, start = (0, 0), None
    for i, good in enumerate([*mask, False]):
        if good and start is None:
            start = i
        elif not good and start is not None:
            if i - start > best[1] - best[0]:
                best = (start, i)
            start = None
    return best
