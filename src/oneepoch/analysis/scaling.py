"""Scaling laws L(N, D[, U]) fitted across runs, and what they imply for a FLOP budget.

- ``chinchilla``: L = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022), fitted as there
  and in the replication of Besiroglu et al. (2024): Huber loss (delta 1e-3) on log loss,
  log L = LSE(a - alpha log N, b - beta log D, e) with a = log A, b = log B, e = log E,
  L-BFGS-B from a grid of starts, bootstrap over data points.
- ``data-constrained`` (Muennighoff et al. 2023): N and D replaced by their effective
  values under repetition,
      D' = U_D + U_D R_D* (1 - exp(-R_D / R_D*)),  R_D = D / U_D - 1,
      N' = U_N + U_N R_N* (1 - exp(-R_N / R_N*)),  R_N = N / U_N - 1,
  with U_N = min(N, N_opt(U_D)): N_opt(U_D) is the parameter count whose compute-optimal
  token count under the law's own A, B, alpha, beta equals U_D (``_log_n_opt_for_tokens``).
  Two procedures: ``paper`` (the default), Muennighoff et al.'s: the Chinchilla terms are
  fitted first, then held while only R_D*, R_N* are fitted (``RepetitionForm``); ``joint``:
  all seven at once, a different problem with a different optimum.

The paper's base terms come from ``--base`` or from the CSV's rows that the Chinchilla law
describes exactly: single-epoch rows with N <= N_opt(U). Single-epoch rows with more
parameters than that carry excess parameters (R_N > 0), which a Chinchilla fit would absorb
into its terms and pass on, biased, to R_D* and R_N*. Which rows those are depends on the
base law, so they are found by iterating (``_base_rows``). The bootstrap repeats the whole
procedure on each resample (the base refitted, then R_D* and R_N*), so the intervals carry
the base's uncertainty. The joint fit starts from the grid and from the paper procedure's
estimate, and says when the two end at different objectives.

A parameter that ends at a bound of its box is reported as not identified, without an
interval; an interval side that the bootstrap replicates push to a bound is open (None).
Every interval contains its point estimate. Degenerate data (fewer distinct points than free
parameters) are an error.

Internally log N and log D are centred on reference values (a_c = a - alpha log N_ref),
which leaves the objective unchanged but conditions the solvers.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from oneepoch.analysis import robust
from oneepoch.analysis.runs import Run, load_run
from oneepoch.errors import UserError
from oneepoch.rundir import RunDir

FORMS = ("chinchilla", "data-constrained")
HUBER_DELTA = 1e-3

# Hoffmann et al.'s grid of starting points, in their (raw) parametrisation.
_GRID = {
    "alpha": [0.0, 0.5, 1.0, 1.5, 2.0],
    "beta": [0.0, 0.5, 1.0, 1.5, 2.0],
    "e": [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5],
    "a": [0.0, 5.0, 10.0, 15.0, 20.0, 25.0],
    "b": [0.0, 5.0, 10.0, 15.0, 20.0, 25.0],
}
# Muennighoff et al.'s fitted values, the centre of the grid for R_D*, R_N*.
_R_STARTS = {"R_D_star": [5.0, 15.4, 50.0], "R_N_star": [2.0, 5.3, 20.0]}
PROCEDURES = ("paper", "joint")
# The paper's procedure starts L-BFGS from this grid of log R_D* x log R_N*.
_R_GRID = np.log(np.geomspace(0.1, 5000.0, 12))
AT_BOUND = "at bound: not identified by these data"


class ChinchillaForm:
    name = "chinchilla"
    param_names = ("E", "A", "B", "alpha", "beta")
    formula = "L = E + A / N^alpha + B / D^beta"
    # the internal parameters, in order (what the fit moves; the rest are fixed or tied)
    free_names = param_names
    fixed_names: tuple[str, ...] = ()
    tied: dict[str, str] = {}

    def __init__(self, n_ref: float, d_ref: float):
        self.log_n_ref, self.log_d_ref = math.log(n_ref), math.log(d_ref)
        self.bounds = np.array([(-10.0, 5.0), (-60.0, 60.0), (-60.0, 60.0), (0.0, 3.0), (0.0, 3.0)])

    def model(self, N, D, U=None) -> _LSEModel:
        zn = np.log(np.asarray(N, dtype=float)) - self.log_n_ref
        zd = np.log(np.asarray(D, dtype=float)) - self.log_d_ref
        return _LSEModel(zn, zd, self.bounds)

    def grid(self) -> np.ndarray:
        alpha, beta, e, a, b = (g.ravel() for g in np.meshgrid(*_GRID.values(), indexing="ij"))
        return np.column_stack(
            [e, a - alpha * self.log_n_ref, b - beta * self.log_d_ref, alpha, beta]
        )

    def starts(self, model, logy) -> np.ndarray:
        return self.grid()

    def raw(self, theta) -> dict[str, np.ndarray]:
        """Natural-log parameters e, a, b and the exponents, [B] each."""
        theta = np.atleast_2d(theta)
        alpha, beta = theta[:, 3], theta[:, 4]
        return {
            "e": theta[:, 0],
            "a": theta[:, 1] + alpha * self.log_n_ref,
            "b": theta[:, 2] + beta * self.log_d_ref,
            "alpha": alpha,
            "beta": beta,
        }

    def params(self, theta) -> dict[str, np.ndarray]:
        raw = self.raw(theta)
        out = {
            "E": np.exp(raw["e"]),
            "A": np.exp(raw["a"]),
            "B": np.exp(raw["b"]),
            "alpha": raw["alpha"],
            "beta": raw["beta"],
        }
        if "rd" in raw:
            out.update(R_D_star=np.exp(raw["rd"]), R_N_star=np.exp(raw["rn"]))
        return out


class _LSEModel:
    """log L = logsumexp(e, a_c - alpha zn, b_c - beta zd), zn, zd centred log N, log D."""

    def __init__(self, zn, zd, bounds):
        self.zn, self.zd, self.bounds = zn, zd, bounds

    def _terms(self, theta):
        e, a, b, alpha, beta = (theta[:, k, None] for k in range(5))
        return np.broadcast_arrays(e, a - alpha * self.zn, b - beta * self.zd)

    def log_pred(self, theta):
        return np.logaddexp.reduce(np.stack(self._terms(theta)), axis=0)

    def log_pred_jac(self, theta):
        te, tn, td = self._terms(theta)
        lp = np.logaddexp.reduce(np.stack([te, tn, td]), axis=0)
        se, sn, sd = np.exp(te - lp), np.exp(tn - lp), np.exp(td - lp)
        return lp, np.stack([se, sn, sd, -self.zn * sn, -self.zd * sd], axis=-1)


class TiedChinchillaForm(ChinchillaForm):
    """The Chinchilla form with beta tied to alpha (``--tie alpha=beta``)."""

    free_names = ("E", "A", "B", "alpha")
    tied = {"beta": "alpha"}
    formula = "L = E + A / N^alpha + B / D^alpha"

    def __init__(self, n_ref: float, d_ref: float):
        super().__init__(n_ref, d_ref)
        self.bounds = self.bounds[:4]

    def model(self, N, D, U=None) -> _TiedModel:
        return _TiedModel(super().model(N, D), self.bounds)

    def grid(self) -> np.ndarray:
        full = super().grid()
        return full[full[:, 3] == full[:, 4], :4]

    def raw(self, theta) -> dict[str, np.ndarray]:
        theta = np.atleast_2d(theta)
        return super().raw(np.column_stack([theta, theta[:, 3]]))


class _TiedModel:
    def __init__(self, inner: _LSEModel, bounds: np.ndarray):
        self.inner, self.bounds = inner, bounds

    def log_pred(self, theta):
        return self.inner.log_pred(np.column_stack([theta, theta[:, 3]]))

    def log_pred_jac(self, theta):
        lp, jac = self.inner.log_pred_jac(np.column_stack([theta, theta[:, 3]]))
        return lp, np.concatenate([jac[..., :3], jac[..., 3:4] + jac[..., 4:5]], axis=-1)


class DataConstrainedForm(ChinchillaForm):
    name = "data-constrained"
    param_names = ("E", "A", "B", "alpha", "beta", "R_D_star", "R_N_star")
    free_names = param_names
    formula = "L = E + A / N'^alpha + B / D'^beta (effective N', D' under repetition)"

    def __init__(self, n_ref: float, d_ref: float):
        super().__init__(n_ref, d_ref)
        # alpha, beta > 0 here: N_opt(U_D) divides by them.
        box = [(-10.0, 5.0), (-60.0, 60.0), (-60.0, 60.0), (0.01, 3.0), (0.01, 3.0)]
        self.bounds = np.array(box + [(-3.0, 9.0), (-3.0, 9.0)])

    def model(self, N, D, U=None, free=None) -> _DataConstrainedModel:
        """The model bound to (N, D, U); ``free`` (bool [7]): the coordinates it is
        differentiated in (the others held, as the paper's procedure holds its base)."""
        U = D if U is None else U
        values = (np.asarray(v, dtype=float) for v in (N, D, U))
        return _DataConstrainedModel(self, *values, free=free)

    def starts(self, model, logy) -> np.ndarray:
        base = np.clip(self.grid(), self.bounds[:5, 0], self.bounds[:5, 1])
        rd, rn = np.log(_R_STARTS["R_D_star"][1]), np.log(_R_STARTS["R_N_star"][1])
        with_r = np.column_stack([base, np.full(len(base), rd), np.full(len(base), rn)])
        best = base[np.argsort(robust.objective(model, with_r, logy, HUBER_DELTA))[:16]]
        pairs = np.log([(d, n) for d in _R_STARTS["R_D_star"] for n in _R_STARTS["R_N_star"]])
        return np.array([[*row, *pair] for row in best for pair in pairs])

    def raw(self, theta) -> dict[str, np.ndarray]:
        theta = np.atleast_2d(theta)
        return {**super().raw(theta), "rd": theta[:, 5], "rn": theta[:, 6]}

    def effective(self, theta, N, D, U) -> tuple[np.ndarray, np.ndarray]:
        """(log N', log D') [B, n] for parameters theta [B, p]."""
        raw = {k: v[:, None] for k, v in self.raw(theta).items()}
        log_u = np.log(U)
        # Far-off parameter vectors (grid corners) overflow harmlessly to inf here.
        with np.errstate(over="ignore", invalid="ignore"):
            log_d_eff = log_u + _log_repetition_gain(np.maximum(D / U - 1.0, 0.0), raw["rd"])
            log_un = np.minimum(np.log(N), _log_n_opt_for_tokens(raw, log_u))
            r_n = np.expm1(np.maximum(np.log(N) - log_un, 0.0))
            log_n_eff = log_un + _log_repetition_gain(r_n, raw["rn"])
        return log_n_eff, log_d_eff


class _DataConstrainedModel:
    def __init__(self, form: DataConstrainedForm, N, D, U, free=None):
        self.form, self.N, self.D, self.U, self.free = form, N, D, U, free
        self.bounds = form.bounds

    def log_pred(self, theta):
        log_n, log_d = self.form.effective(theta, self.N, self.D, self.U)
        inner = _LSEModel(log_n - self.form.log_n_ref, log_d - self.form.log_d_ref, None)
        return inner.log_pred(theta[:, :5])

    def log_pred_jac(self, theta):
        return robust.numeric_jac(self.log_pred, theta, self.bounds, self.free)


class RepetitionForm:
    """Muennighoff et al.'s second step: the data-constrained form with its Chinchilla terms
    held at ``base_theta`` (internal, the five first coordinates of DataConstrainedForm),
    fitting only R_D* and R_N* (in log)."""

    name = "data-constrained"
    param_names = DataConstrainedForm.param_names
    formula = DataConstrainedForm.formula
    free_names = ("R_D_star", "R_N_star")

    def __init__(self, full_form: DataConstrainedForm, base_theta: np.ndarray):
        self.full_form, self.base_theta = full_form, np.asarray(base_theta, dtype=float)
        self.bounds = full_form.bounds[5:]

    def full(self, theta) -> np.ndarray:
        theta = np.atleast_2d(theta)
        return np.column_stack([np.tile(self.base_theta, (len(theta), 1)), theta])

    def model(self, N, D, U=None) -> _RepetitionModel:
        return _RepetitionModel(self, self.full_form.model(N, D, U))

    def starts(self, model, logy) -> np.ndarray:
        return np.array([(d, n) for d in _R_GRID for n in _R_GRID])


class _RepetitionModel:
    def __init__(self, form: RepetitionForm, full_model: _DataConstrainedModel):
        self.form, self.full_model, self.bounds = form, full_model, form.bounds

    def log_pred(self, theta):
        return self.full_model.log_pred(self.form.full(theta))

    def log_pred_jac(self, theta):
        return robust.numeric_jac(self.log_pred, theta, self.bounds)


def _log_repetition_gain(repeats, log_r_star):
    """log(1 + R* (1 - exp(-R / R*))): effective over unique count (Muennighoff et al.)."""
    r_star = np.exp(log_r_star)
    return np.log1p(-r_star * np.expm1(-repeats / r_star))


def _log_n_opt_for_tokens(raw: dict, log_tokens):
    """log of the N whose compute-optimal D equals ``tokens`` under the Chinchilla terms.

    With C = 6ND, N_opt = G (C/6)^(beta/(alpha+beta)) and D_opt = (C/6)^(alpha/(alpha+beta))
    / G, G = (alpha A / (beta B))^(1/(alpha+beta)); solving D_opt = U gives
    N_opt = G (G U)^(beta/alpha).
    """
    alpha, beta = raw["alpha"], raw["beta"]
    log_g = (np.log(alpha) + raw["a"] - np.log(beta) - raw["b"]) / (alpha + beta)
    return log_g + (beta / alpha) * (log_g + log_tokens)


@dataclass
class ScalingFit:
    form: ChinchillaForm  # the reported form: chinchilla (maybe tied) or data-constrained
    data: dict[str, np.ndarray]  # N, D, (U), L, and "row": the CSV row index of each
    theta: np.ndarray  # internal parameters of ``form``
    boot: np.ndarray  # bootstrap replicates [n_boot, p] of them
    objective: float
    delta: float
    level: float
    columns: dict[str, str]
    procedure: str | None = None  # data-constrained only: "paper" or "joint"
    base: dict | None = None  # the paper's procedure: where its Chinchilla terms came from
    estimated: tuple[str, ...] | None = None  # names estimated here (default: all free)
    tied: dict[str, str] = field(default_factory=dict)
    optimizer: dict = field(default_factory=dict)
    # (rows, parameters) behind each estimate: the bootstrap alone underestimates the
    # spread when few rows carry many parameters (see ``_interval``)
    dof: dict[str, tuple[int, int]] = field(default_factory=dict)
    outliers: dict = field(default_factory=lambda: {"policy": "none", "dropped_lines": []})

    def __post_init__(self):
        self.tied = self.tied or dict(self.form.tied)

    def estimated_names(self) -> tuple[str, ...]:
        if self.estimated is not None:
            return self.estimated
        return tuple(n for n in self.form.free_names if n not in self.tied)

    def _index(self, name: str) -> int:
        return self.form.free_names.index(name)

    def at_bound(self) -> list[str]:
        """Estimated parameters whose estimate ended at (within 1e-6 of) a bound of the box."""
        out = []
        for name in self.estimated_names():
            j = self._index(name)
            lo, hi = self.form.bounds[j]
            if min(abs(self.theta[j] - lo), abs(self.theta[j] - hi)) < 1e-6:
                out.append(name)
        return out

    def params(self) -> dict[str, dict]:
        return self._params_and_widened()[0]

    def _params_and_widened(self) -> tuple[dict[str, dict], list[str]]:
        point, samples = self.form.params(self.theta), self.form.params(self.boot)
        out, widened = {}, []
        estimated, at_bound = self.estimated_names(), self.at_bound()
        for name in self.form.param_names:
            if name in self.tied:
                continue
            if name in at_bound:
                out[name] = {**_point_only(point[name][0]), "note": AT_BOUND}
            elif name not in estimated:
                out[name] = {**_point_only(point[name][0]), "fixed": "from the base law"}
            else:
                out[name], moved = self._interval(name, point[name][0], samples[name])
                if moved:
                    widened.append(name)
        for name, to in self.tied.items():
            out[name] = {**out[to], "tied": to}
        return {name: out[name] for name in self.form.param_names}, widened

    def _interval(self, name: str, value: float, samples: np.ndarray) -> tuple[dict, bool]:
        """The percentile interval of one parameter. A side that more than its tail's share
        of replicates reach at a bound of the box is open (None): the data do not limit it.
        The interval always contains the point (``True`` when it had to be widened to)."""
        rows, fitted = self.dof.get(name, (0, 0))
        df = rows - fitted if rows > fitted else None
        # positive parameters are widened on a log scale, so an interval never crosses zero
        log = name not in ("alpha", "beta") and value > 0 and np.all(samples > 0)
        center, reps = (np.log(value), np.log(samples)) if log else (value, samples)
        est = robust.estimate(center, reps, self.level, df)
        if est["ci_low"] is None and est["ci_high"] is None:
            return robust.estimate(value, samples, self.level), False
        widen = robust.t_over_z(self.level, df)
        if df:  # the pairs bootstrap's spread, like residuals', shrinks by (n - p) / n
            inflate = math.sqrt(rows / df)
            widen *= inflate
            for side in ("ci_low", "ci_high"):
                if est[side] is not None:
                    est[side] = center + (est[side] - center) * inflate
        natural = robust.estimate(value, samples, self.level)
        se = natural["se"] * widen if natural["se"] is not None else None
        back = np.exp if log else float
        est = {
            "value": value,
            "ci_low": float(back(est["ci_low"])) if est["ci_low"] is not None else None,
            "ci_high": float(back(est["ci_high"])) if est["ci_high"] is not None else None,
            "se": se,
        }
        j = self._index(name)
        lo_b, hi_b = self.form.bounds[j]
        tail = (1 - self.level) / 2
        moved = False
        if est["ci_low"] > value:
            est["ci_low"], moved = value, True
        if est["ci_high"] < value:
            est["ci_high"], moved = value, True
        if np.mean(np.abs(self.boot[:, j] - lo_b) < 1e-6) > tail:
            est["ci_low"], est["se"] = None, None
        if np.mean(np.abs(self.boot[:, j] - hi_b) < 1e-6) > tail:
            est["ci_high"], est["se"] = None, None
        return est, moved

    def warnings(self) -> list[str]:
        params, widened = self._params_and_widened()
        out = [
            f"{name} ended at a bound of its range ({params[name]['value']:.4g}): "
            "it is not identified by these data, so no interval is given"
            for name in self.at_bound()
        ]
        out += [
            f"{name}: most bootstrap replicates lie on one side of the estimate "
            "(another minimum nearby); its interval was widened to include the estimate"
            for name in widened
        ]
        return out + list(self.optimizer.get("notes", []))

    def law(self) -> ScalingLaw:
        point = self.form.params(self.theta)
        replicates = None
        if len(self.boot):
            samples = self.form.params(self.boot)
            replicates = np.column_stack([samples[k] for k in self.form.param_names])
        return ScalingLaw(
            self.form.name,
            {k: float(v[0]) for k, v in point.items()},
            replicates=replicates,
            not_identified=tuple(self.at_bound()),
        )

    def compute_optimal_summary(self) -> dict:
        """Allocation exponents and tokens per parameter implied by the fit, under C = 6ND.
        With the base terms given (--base) these follow from the base alone: no interval."""
        c_ref = float(np.median(6 * self.data["N"] * self.data["D"]))
        point, samples = self.form.params(self.theta), self.form.params(self.boot)

        def implied(p):
            alpha, beta = p["alpha"], p["beta"]
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                a, b = beta / (alpha + beta), alpha / (alpha + beta)
                log_g = (np.log(alpha * p["A"]) - np.log(beta * p["B"])) / (alpha + beta)
                ratio = np.exp(-2 * log_g + (b - a) * np.log(c_ref / 6))
            return a, b, ratio

        (a, b, r), (a_s, b_s, r_s) = implied(point), implied(samples)
        if "alpha" not in self.estimated_names():
            a_s = b_s = r_s = np.empty(0)
        return {
            "N_opt_exponent": robust.estimate(a[0], a_s, self.level),
            "D_opt_exponent": robust.estimate(b[0], b_s, self.level),
            "tokens_per_param": robust.estimate(r[0], r_s, self.level),
            "tokens_per_param_at_flops": c_ref,
        }

    def to_json(self) -> dict:
        out = {
            "form": self.form.name,
            "formula": self.form.formula,
            **self.params(),
            "n_points": int(self.data["L"].size),
            "objective": self.objective,
            "huber_delta": self.delta,
            "n_bootstrap": int(len(self.boot)),
            "level": self.level,
            "columns": self.columns,
            "outliers": self.outliers,
            "warnings": self.warnings(),
        }
        if self.procedure is not None:
            out["procedure"] = self.procedure
        if self.base is not None:
            out["base"] = self.base
        out["optimizer"] = {k: v for k, v in self.optimizer.items() if k != "notes"}
        out.update(self.compute_optimal_summary())
        law = self.law()
        if law.replicates is not None:
            out["replicates"] = {
                "names": list(self.form.param_names),
                "values": [[float(x) for x in row] for row in law.replicates],
            }
        return out


def _point_only(value: float) -> dict:
    return {"value": float(value), "ci_low": None, "ci_high": None, "se": None}


def fit_scaling(
    data: dict[str, np.ndarray],
    form: str = "chinchilla",
    *,
    n_boot: int = 200,
    level: float = robust.DEFAULT_LEVEL,
    seed: int = 0,
    delta: float = HUBER_DELTA,
    columns: dict[str, str] | None = None,
    procedure: str = "paper",
    base: ScalingLaw | None = None,
    base_source: str | None = None,
    tie: bool = False,
    drop_highest: int = 0,
    drop_above: float | None = None,
) -> ScalingFit:
    """Fit ``form`` to data {"N", "D", "L"[, "U"]} with a pairs bootstrap.

    Outliers first (``_drop_outliers``). Chinchilla: all five terms (``tie``: beta =
    alpha). Data-constrained, ``procedure="paper"``: the Chinchilla terms from ``base``
    (else a Chinchilla fit, tied if ``tie``, to the single-epoch rows with N <= N_opt(U)),
    then R_D* and R_N* alone; ``"joint"``: all seven at once.
    """
    if form not in FORMS:
        raise UserError(f"unknown scaling form {form!r}; choose from {', '.join(FORMS)}.")
    if procedure not in PROCEDURES:
        raise UserError(f"--procedure must be one of {', '.join(PROCEDURES)}, not {procedure!r}.")
    data = {**data, "row": np.arange(np.asarray(data["L"]).size)}
    data, outliers = _drop_outliers(data, drop_highest, drop_above)
    N, D, L = data["N"], data["D"], data["L"]
    refs = (float(np.exp(np.mean(np.log(N)))), float(np.exp(np.mean(np.log(D)))))
    rng = np.random.default_rng(seed)
    common = dict(delta=delta, level=level, columns=columns or {}, outliers=outliers)
    if form == "chinchilla":
        fitted = (TiedChinchillaForm if tie else ChinchillaForm)(*refs)
        _check_identifiable(data, form, fitted)
        model, logy = fitted.model(N, D), np.log(L)
        theta, obj, report = _fit_from(model, logy, {"the start grid": fitted.grid()}, delta)
        boot = robust.bootstrap(model, theta, logy, delta, n_boot, rng, kind="pairs")
        # no small-sample widening here: the pairs bootstrap already covers 90-97% on a
        # 61-point IsoFLOP design (docs/analysis.md)
        return ScalingFit(fitted, data, theta, boot, obj, optimizer=report, **common)
    if procedure == "joint":
        if base is not None or tie:
            raise UserError("--base and --tie belong to the paper's procedure; drop them.")
        return _fit_joint(data, refs, n_boot, rng, common)
    if base is not None and tie:
        raise UserError(
            "--tie applies to the base fit; fit the base law with --tie instead of "
            "passing both --tie and --base."
        )
    return _fit_paper(data, refs, base, base_source, tie, n_boot, rng, common)


def _fit_from(model, logy, starts: dict[str, np.ndarray], delta: float, free=None):
    """The best fit over groups of starts, and a report: each group's objective, which won,
    and notes when a group ended worse than another (the objective has several minima) or
    the winner is not a minimum (the optimiser stopped early)."""
    ends = {}
    for label, group in starts.items():
        group = np.atleast_2d(group)
        ends[label] = robust.fit_multistart(model, logy, group, delta, n_polish=min(8, len(group)))
    best = min(ends, key=lambda k: ends[k][1])
    theta, obj = ends[best]
    decrement = robust.newton_decrement(model, theta, logy, delta, free)
    notes = []
    if decrement > 1e-6:
        notes.append(
            f"the optimiser stopped before reaching a minimum: one more Gauss-Newton step "
            f"would lower the objective by about {decrement:.2%}; treat the estimate with care"
        )
    for label, (_, other) in ends.items():
        if other > obj * (1 + 1e-3) + 1e-12:
            notes.append(
                f"started from {label}, the optimiser ended at objective {other:.4g}, "
                f"{other / obj - 1:.1%} worse than the {obj:.4g} reached from {best}: the "
                "objective has more than one minimum here; the better is reported"
            )
    report = {
        "objective_by_start": {k: float(v[1]) for k, v in ends.items()},
        "best_start": best,
        "newton_decrement": decrement,
        "notes": notes,
    }
    return theta, obj, report


def _fit_joint(data, refs, n_boot, rng, common) -> ScalingFit:
    """All seven parameters at once, from the grid and from the paper procedure's estimate."""
    delta = common["delta"]
    fitted = DataConstrainedForm(*refs)
    _check_identifiable(data, "data-constrained", fitted)
    model, logy = fitted.model(data["N"], data["D"], data.get("U")), np.log(data["L"])
    starts = {"the start grid": fitted.starts(model, logy)}
    try:
        paper = _fit_paper(data, refs, None, None, False, 0, rng, common)
        starts["the paper procedure's estimate"] = paper.theta
    except UserError:
        pass  # too few single-epoch rows for a base: the grid alone
    theta, obj, report = _fit_from(model, logy, starts, delta)
    boot = robust.bootstrap(model, theta, logy, delta, n_boot, rng, kind="pairs")
    dof = dict.fromkeys(fitted.param_names, (logy.size, len(fitted.free_names)))
    return ScalingFit(
        fitted, data, theta, boot, obj, procedure="joint", optimizer=report, dof=dof, **common
    )


def _fit_paper(data, refs, base, base_source, tie, n_boot, rng, common) -> ScalingFit:
    """Muennighoff et al.'s procedure: base terms, then R_D* and R_N* with them held. The
    bootstrap refits both steps on each resample (the base on its own rows, warm-started)."""
    delta = common["delta"]
    full = DataConstrainedForm(*refs)
    N, D, U, logy = data["N"], data["D"], data["U"], np.log(data["L"])
    r_free = np.array([False] * 5 + [True] * 2)
    tied, base_notes, dof = {}, [], {}
    if base is not None:
        base5, rows, estimated = _internal_base(base, full), None, ("R_D_star", "R_N_star")
        base_info = {"source": base_source, **base.params}
    else:
        base_model, rows, base5, base_theta, base_info, base_notes = _base_fit(
            data, full, tie, delta
        )
        tied = {"beta": "alpha"} if tie else {}
        estimated = tuple(n for n in full.param_names if n not in tied)
        dof = dict.fromkeys(estimated[:-2], (len(base_info["rows"]), base_theta.size))
    dof.update(dict.fromkeys(("R_D_star", "R_N_star"), (logy.size, len(estimated))))
    stage = RepetitionForm(full, base5)
    _check_identifiable(data, "data-constrained", stage)
    model = stage.model(N, D, U)
    r_theta, obj, report = _fit_from(
        model, logy, {"the start grid": stage.starts(None, None)}, delta
    )
    theta = np.concatenate([base5, r_theta])
    report["notes"] = [f"base fit: {note}" for note in base_notes] + report["notes"]

    boot = np.empty((0, theta.size))
    if n_boot > 0:
        n = logy.size
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)
        starts = np.tile(theta, (n_boot, 1))
        if rows is not None:
            refit = robust.refine_batch(
                base_model, np.tile(base_theta, (n_boot, 1)), logy[rows], delta, counts[:, rows]
            )
            starts[:, :5] = base_model.full(refit)[:, :5]
        boot = robust.refine_batch(
            full.model(N, D, U, free=r_free), starts, logy, delta, counts, free=r_free
        )
    return ScalingFit(
        full,
        data,
        theta,
        boot,
        obj,
        procedure="paper",
        base=base_info,
        estimated=estimated,
        tied=tied,
        optimizer=report,
        dof=dof,
        **common,
    )


def _internal_base(base: ScalingLaw, full: DataConstrainedForm) -> np.ndarray:
    """A chinchilla law's terms as the first five internal coordinates of ``full``."""
    p = base.params
    return np.array(
        [
            math.log(p["E"]),
            math.log(p["A"]) - p["alpha"] * full.log_n_ref,
            math.log(p["B"]) - p["beta"] * full.log_d_ref,
            p["alpha"],
            p["beta"],
        ]
    )


class _Reduced:
    """A model in fewer coordinates than ``model``: full theta = offset + reduced @ M.T (the
    base fit's tied exponents and held R_D*)."""

    def __init__(self, model, M: np.ndarray, offset: np.ndarray):
        self.model, self.M, self.offset = model, M, offset
        used = np.abs(M).sum(axis=1) > 0
        self.bounds = np.array(
            [model.bounds[np.flatnonzero(M[:, k])[0]] for k in range(M.shape[1])]
        )
        self.model.free = used

    def full(self, theta) -> np.ndarray:
        return self.offset + np.atleast_2d(theta) @ self.M.T

    def log_pred(self, theta):
        return self.model.log_pred(self.full(theta))

    def log_pred_jac(self, theta):
        pred, jac = self.model.log_pred_jac(self.full(theta))
        return pred, jac @ self.M


def paper_base_rows(tie: bool = False) -> int:
    """The fewest single-epoch rows the paper's procedure fits its base on: the Chinchilla
    terms (four when tied) and R_N*, plus two."""
    return (5 if tie else 6) + 2


def _base_fit(data: dict, full: DataConstrainedForm, tie: bool, delta: float):
    """(model, internal base parameters [5], reduced parameters, record): the data-constrained
    form fitted to the single-epoch rows, where R_D = 0 so R_D* plays no part, with R_N*
    free: rows with more parameters than N_opt(U) carry excess parameters, and a fit that
    models them keeps their cost out of the Chinchilla terms. Tied: beta = alpha."""
    N, D, U, logy = data["N"], data["D"], data["U"], np.log(data["L"])
    single = U >= D * (1 - 1e-9)
    keep = [0, 1, 2, 3] + ([] if tie else [4]) + [6]  # e, a, b, alpha, (beta), log R_N*
    M = np.zeros((7, len(keep)))
    M[keep, np.arange(len(keep))] = 1.0
    if tie:
        M[4, 3] = 1.0  # beta follows alpha
    offset = np.zeros(7)
    offset[5] = math.log(_R_STARTS["R_D_star"][1])  # held; no effect on single-epoch rows
    need = paper_base_rows(tie)
    if single.sum() < need:
        raise UserError(
            f"the paper's data-constrained procedure fits its Chinchilla terms on the "
            f"single-epoch rows (unique_tokens = tokens); the CSV has {int(single.sum())}, "
            f"fewer than the {need} that fit needs: add single-epoch runs, pass --base "
            "LAW.json, or use --procedure joint."
        )
    model = _Reduced(full.model(N[single], D[single], U[single]), M, offset)
    logy_single = logy[single]
    # starts: the Chinchilla grid's 16 best points (at R_N* 5.3) times R_N* in {2, 5.3, 20},
    # and the plain Chinchilla fit to the same rows (Hoffmann et al.'s whole grid)
    refs = (math.exp(full.log_n_ref), math.exp(full.log_d_ref))
    chin_form = (TiedChinchillaForm if tie else ChinchillaForm)(*refs)
    base = np.clip(chin_form.grid(), model.bounds[:-1, 0], model.bounds[:-1, 1])
    r_n = np.log(_R_STARTS["R_N_star"])
    at_r = np.column_stack([base, np.full(len(base), r_n[1])])
    best = base[np.argsort(robust.objective(model, at_r, logy_single, delta))[:16]]
    chin_model = chin_form.model(N[single], D[single])
    chin, _ = robust.fit_multistart(chin_model, logy_single, chin_form.grid(), delta, n_polish=8)
    chin = np.clip(chin, model.bounds[:-1, 0], model.bounds[:-1, 1])
    starts = {
        "the start grid": [[*row, r] for row in best for r in r_n],
        "a Chinchilla fit to the same rows": [[*chin, r] for r in r_n],
    }
    theta, obj, report = _fit_from(model, logy_single, starts, delta)
    base5 = model.full(theta)[0, :5]
    law = ScalingLaw(
        "chinchilla",
        {
            k: float(v[0])
            for k, v in full.params(model.full(theta)).items()
            if k in ChinchillaForm.param_names
        },
    )
    record = {
        "source": "the CSV's single-epoch rows, fitted with R_N* (excess parameters)",
        **law.params,
        "R_N_star": float(math.exp(theta[-1])),
        "rows": [int(r) + 2 for r in data["row"][single]],
        "objective": obj,
        "optimizer": {k: v for k, v in report.items() if k != "notes"},
    }
    return model, single, base5, theta, record, report["notes"]


def _drop_outliers(data: dict, drop_highest: int, drop_above: float | None):
    """The named outlier policy: drop the ``drop_highest`` highest-loss rows and/or rows
    with loss above ``drop_above``. Returns the kept data and a record of what was done
    (CSV line numbers, the header being line 1)."""
    L = data["L"]
    if drop_highest < 0:
        raise UserError(f"--drop-highest must be 0 or more, not {drop_highest}.")
    drop = np.zeros(L.size, dtype=bool)
    if drop_highest:
        drop[np.argsort(-L, kind="stable")[:drop_highest]] = True
    if drop_above is not None:
        drop |= L > drop_above
    policy = []
    if drop_highest:
        policy.append(f"drop the {drop_highest} highest-loss rows")
    if drop_above is not None:
        policy.append(f"drop rows with loss above {drop_above:g}")
    if drop.all():
        raise UserError(
            f"the outlier policy ({'; '.join(policy)}) drops all {L.size} rows; drop fewer."
        )
    record = {
        "policy": "; ".join(policy) or "none",
        "dropped_lines": [int(i) + 2 for i in np.flatnonzero(drop)],
    }
    return {k: v[~drop] for k, v in data.items()}, record


def _check_identifiable(data: dict, form: str, fitted) -> None:
    n_free = len(fitted.free_names)
    need = n_free + 2
    if data["L"].size < need:
        raise UserError(
            f"the {form} fit needs at least {need} rows, the CSV has {data['L'].size} "
            "after dropping outliers; add runs (more budgets or --sizes in `oneepoch sweep`), "
            "drop fewer outliers, or tie exponents (--tie alpha=beta) to free fewer parameters."
        )
    keys = [k for k in ("N", "D", "U") if k in data]
    distinct = len({tuple(data[k][i] for k in keys) for i in range(data["L"].size)})
    if distinct < n_free:
        names = "(params, tokens" + (", unique tokens)" if "U" in keys else ")")
        raise UserError(
            f"the {form} fit has {n_free} free parameters but the CSV holds only {distinct} "
            f"distinct {names} points; add runs of other sizes or token counts."
        )


@dataclass
class ScalingLaw:
    """A fitted law's point estimates: what the planner needs to predict and allocate; with
    its bootstrap replicates (natural parameters, [n_boot, len(params)] in the form's order)
    when the fit had them, and the parameters it could not identify (at a bound)."""

    form: str
    params: dict[str, float]
    replicates: np.ndarray | None = None
    not_identified: tuple[str, ...] = ()

    def param_names(self) -> tuple[str, ...]:
        return (
            ChinchillaForm.param_names
            if self.form == "chinchilla"
            else DataConstrainedForm.param_names
        )

    def predict_replicates(self, N, D, U=None) -> np.ndarray:
        """Loss under every bootstrap replicate, [n_boot, *shape] (empty without them)."""
        if self.replicates is None or not len(self.replicates):
            return np.empty((0, *np.broadcast(N, D).shape))
        return predict_params(self.form, self.replicates, N, D, U)

    def predict(self, N, D, U=None) -> np.ndarray:
        """Loss at N parameters and D training tokens, of which U unique (default D)."""
        row = np.array([[self.params[k] for k in self.param_names()]])
        return predict_params(self.form, row, N, D, U)[0]

    def compute_optimal(
        self,
        flops: float,
        flops_per_token: Callable[[float], float] | None = None,
        unique_tokens: float | None = None,
    ) -> dict:
        """N, D minimising predicted loss subject to flops = flops_per_token(N) * D.

        ``flops_per_token(n_params)`` defaults to 6 N. With ``unique_tokens`` (the corpus
        size) a data-constrained law charges for repeating it.
        """
        from scipy.optimize import minimize_scalar

        fpt = flops_per_token or (lambda n: 6.0 * n)

        def tokens_for(n):
            return flops / float(fpt(n))

        def loss_at(log_n):
            n = math.exp(log_n)
            d = tokens_for(n)
            return float(self.predict(n, d, unique_tokens)) if d >= 1 else np.inf

        # a coarse grid over every model size the budget allows, then Brent's method
        grid = np.linspace(math.log(10.0), math.log(max(flops, 100.0)), 400)
        n = np.exp(grid)
        d = np.array([tokens_for(x) for x in n])
        ok = d >= 1
        if not ok.any():
            raise UserError(f"a budget of {flops:g} FLOPs cannot train any model; raise it.")
        values = np.full(grid.size, np.inf)
        u = None if unique_tokens is None else np.full(ok.sum(), float(unique_tokens))
        values[ok] = self.predict(n[ok], d[ok], u)
        i = int(np.argmin(values))
        lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
        best = minimize_scalar(loss_at, bounds=(lo, hi), method="bounded", options={"xatol": 1e-9})
        log_n = best.x if best.fun <= values[i] else grid[i]
        n_best = math.exp(log_n)
        return {
            "params": n_best,
            "tokens": tokens_for(n_best),
            "loss": loss_at(log_n),
            "flops": float(flops),
        }


def predict_params(form: str, params: np.ndarray, N, D, U=None) -> np.ndarray:
    """Loss [B, *shape] under B parameter vectors ``params`` (natural values, in the form's
    param_names order) at N parameters and D tokens, U of them unique (default D)."""
    N, D = np.broadcast_arrays(np.asarray(N, dtype=float), np.asarray(D, dtype=float))
    U = D if U is None else np.minimum(np.broadcast_to(np.asarray(U, dtype=float), D.shape), D)
    P = np.atleast_2d(np.asarray(params, dtype=float))
    cls = ChinchillaForm if form == "chinchilla" else DataConstrainedForm
    theta = [np.log(P[:, 0]), np.log(P[:, 1]), np.log(P[:, 2]), P[:, 3], P[:, 4]]
    if form == "data-constrained":
        theta += [np.log(P[:, 5]), np.log(P[:, 6])]
    model = cls(1.0, 1.0).model(N.ravel(), D.ravel(), U.ravel())
    return np.exp(robust.log_pred(model, np.column_stack(theta))).reshape(len(P), *N.shape)


def predict_loss(law: ScalingLaw, N, D, U=None) -> np.ndarray:
    return law.predict(N, D, U)


def compute_optimal(
    law: ScalingLaw,
    flops: float,
    flops_per_token: Callable[[float], float] | None = None,
    unique_tokens: float | None = None,
) -> dict:
    return law.compute_optimal(flops, flops_per_token, unique_tokens)


def load_law(path: str | Path) -> ScalingLaw:
    """Read a law written by ``oneepoch scaling fit --json``."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder; give the law file `oneepoch scaling fit` wrote.")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} does not exist; write it with `oneepoch scaling fit`.") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(
            f"{path} is not valid JSON; rewrite it with `oneepoch scaling fit`."
        ) from None
    except OSError as exc:
        raise UserError(f"cannot read {path} ({exc.strerror}).") from None
    if not isinstance(obj, dict):
        raise UserError(
            f"{path} holds a JSON {type(obj).__name__.replace('NoneType', 'null')}, not a law; "
            "give the file `oneepoch scaling fit --json` wrote."
        )
    form = obj.get("form", "chinchilla")
    if form not in FORMS:
        raise UserError(
            f"{path} has unknown form {form!r}; rewrite it with `oneepoch scaling fit`."
        )
    names = ChinchillaForm.param_names if form == "chinchilla" else DataConstrainedForm.param_names
    try:
        params = {k: float(obj[k]["value"]) for k in names}
    except (KeyError, TypeError, ValueError):
        raise UserError(
            f"{path} lacks the values of {', '.join(names)}; rewrite it with "
            "`oneepoch scaling fit`."
        ) from None
    # What the law's form means: a finite floor E >= 0, terms A/N^alpha and B/D^beta that
    # fall with N and D (A, B, alpha, beta > 0), positive repetition constants.
    bad = [k for k, v in params.items() if not math.isfinite(v) or v < 0 or (k != "E" and v == 0)]
    if bad:
        shown = ", ".join(f"{k} = {params[k]:g}" for k in bad)
        raise UserError(
            f"{path} holds {shown}, which no scaling law has (E must be a finite number >= 0, "
            "the others positive); rewrite it with `oneepoch scaling fit`."
        )
    not_identified = tuple(k for k in names if "note" in obj[k] and obj[k]["note"] == AT_BOUND)
    return ScalingLaw(form, params, _read_replicates(obj, names, path), not_identified)


def _read_replicates(obj: dict, names: tuple[str, ...], path: Path) -> np.ndarray | None:
    """The law file's bootstrap replicates as [n_boot, len(names)], or None when it has none."""
    rep = obj.get("replicates")
    if rep is None:
        return None
    try:
        order = [list(rep["names"]).index(k) for k in names]
        values = np.array(rep["values"], dtype=float)[:, order]
    except (KeyError, TypeError, ValueError, IndexError):
        raise UserError(
            f"{path} has unreadable bootstrap replicates; rewrite it with `oneepoch scaling fit`."
        ) from None
    if values.ndim != 2 or not np.all(np.isfinite(values)) or np.any(values[:, :3] <= 0):
        raise UserError(
            f"{path} has unreadable bootstrap replicates; rewrite it with `oneepoch scaling fit`."
        )
    return values


def read_csv(
    path: str | Path,
    *,
    params_col: str = "params",
    tokens_col: str = "tokens",
    loss_col: str = "loss",
    unique_col: str | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Columns N, D, L (and U when ``unique_col``) as positive floats, and the names used."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; build one with `oneepoch scaling sweep-csv`.")
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (UnicodeDecodeError, csv.Error):
        raise UserError(
            f"{path} is not a text CSV; pass the file `oneepoch scaling sweep-csv` wrote."
        ) from None
    header = rows[0].keys() if rows else []
    wanted = {"N": params_col, "D": tokens_col, "L": loss_col}
    if unique_col:
        wanted["U"] = unique_col
    if not rows:
        raise UserError(f"{path} has no data rows; it needs a header and one row per run.")
    missing = [c for c in wanted.values() if c not in header]
    if missing:
        raise UserError(
            f"{path} lacks column(s) {', '.join(missing)} (it has {', '.join(header)}); "
            "rename them or pass --params-col/--tokens-col/--loss-col/--unique-col."
        )
    data = {}
    for key, col in wanted.items():
        values = []
        for i, row in enumerate(rows, start=2):  # line 1 is the header
            cell = (row.get(col) or "").strip()
            try:
                value = float(cell)
            except ValueError:
                raise UserError(
                    f"{path} line {i}: {col} = {cell!r} is not a number; fix the "
                    "cell or drop the row."
                ) from None
            if not (math.isfinite(value) and value > 0):
                raise UserError(
                    f"{path} line {i}: {col} = {cell} must be a positive number; "
                    "fix the cell or drop the row."
                )
            values.append(value)
        data[key] = np.array(values)
    if "U" in data and np.any(data["U"] > data["D"] * (1 + 1e-9)):
        i = int(np.argmax(data["U"] > data["D"])) + 2
        raise UserError(
            f"{path} line {i}: {unique_col} exceeds {tokens_col}; unique tokens "
            "cannot outnumber the tokens trained on."
        )
    return data, {k: v for k, v in wanted.items()}


SWEEP_COLUMNS = ("run", "params", "tokens", "unique_tokens", "loss", "flops", "wall_s")


def sweep_rows(runs: list[Run], loss: str = "final", params: str = "non_embedding") -> list[dict]:
    """One CSV row per run: its parameter count, and its final val loss with its final
    tokens, unique tokens, FLOPs and wall-clock, or (``loss="best"``) its lowest val loss
    with those of that evaluation: a repeated run that overfits is its best, early-stopped
    point, where the tokens it had seen are fewer than the run's."""
    if loss not in ("final", "best"):
        raise UserError(f"--loss must be final or best, not {loss!r}.")
    rows = []
    for run in runs:
        count = run.info.get("params", {}).get(params)
        if not isinstance(count, (int, float)) or count <= 0:
            raise UserError(
                f"{RunDir(run.path).info} has no params.{params}; "
                "finish the run or pass a different --params."
            )
        val = run.evals["val_loss"]
        if val.size == 0:
            raise UserError(f"{run.path} has no evaluations; train it longer before sweeping.")
        if loss == "final":
            at, value = run.lines, float(val[-1])
        else:  # the best evaluation, with the tokens (and unique tokens) it had seen
            i = int(np.nanargmin(val))
            at, value = {k: v[: i + 1] for k, v in run.evals.items()}, float(val[i])
        rows.append(
            {
                "run": str(run.path),
                "params": int(count),
                "tokens": _last_finite(at["tokens"]),
                "unique_tokens": _last_finite(at["unique_tokens"]),
                "loss": value,
                "flops": _last_finite(at["flops"]),
                "wall_s": _last_finite(at["wall_s"]),
            }
        )
    return rows


def _last_finite(values: np.ndarray):
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return ""
    v = float(finite[-1])
    return int(v) if v.is_integer() else v


def write_sweep_csv(run_dirs, fh, loss: str, params: str) -> None:
    """The scaling CSV of ``run_dirs`` (one row per run, SWEEP_COLUMNS) written to ``fh``."""
    rows = sweep_rows([load_run(p) for p in run_dirs], loss=loss, params=params.replace("-", "_"))
    writer = csv.DictWriter(fh, fieldnames=SWEEP_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
