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
  fixed from a base law (``--base``, or a Chinchilla fit to the CSV's single-epoch rows)
  and only R_D*, R_N* are fitted (``RepetitionForm``); ``joint``: all seven at once, a
  different problem with a different optimum.

A parameter that ends at a bound of its box is reported as not identified, without an
interval. Degenerate data (fewer distinct points than free parameters) are an error.

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
from oneepoch.analysis.runs import Run
from oneepoch.errors import UserError

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

    def model(self, N, D, U=None) -> _DataConstrainedModel:
        U = D if U is None else U
        return _DataConstrainedModel(self, *(np.asarray(v, dtype=float) for v in (N, D, U)))

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
    def __init__(self, form: DataConstrainedForm, N, D, U):
        self.form, self.N, self.D, self.U = form, N, D, U
        self.bounds = form.bounds

    def log_pred(self, theta):
        log_n, log_d = self.form.effective(theta, self.N, self.D, self.U)
        inner = _LSEModel(log_n - self.form.log_n_ref, log_d - self.form.log_d_ref, None)
        return inner.log_pred(theta[:, :5])

    def log_pred_jac(self, theta):
        return robust.numeric_jac(self.log_pred, theta, self.bounds)


class RepetitionForm:
    """Muennighoff et al.'s procedure: the data-constrained form with its Chinchilla terms
    fixed at a base law's values, fitting only R_D* and R_N* (in log)."""

    name = "data-constrained"
    param_names = DataConstrainedForm.param_names
    formula = DataConstrainedForm.formula
    free_names = ("R_D_star", "R_N_star")
    fixed_names = ("E", "A", "B", "alpha", "beta")
    tied: dict[str, str] = {}

    def __init__(self, n_ref: float, d_ref: float, base: ScalingLaw):
        self.full_form = DataConstrainedForm(n_ref, d_ref)
        p = base.params
        self.base_theta = np.array(
            [
                math.log(p["E"]),
                math.log(p["A"]) - p["alpha"] * self.full_form.log_n_ref,
                math.log(p["B"]) - p["beta"] * self.full_form.log_d_ref,
                p["alpha"],
                p["beta"],
            ]
        )
        self.bounds = self.full_form.bounds[5:]

    def full(self, theta) -> np.ndarray:
        theta = np.atleast_2d(theta)
        return np.column_stack([np.tile(self.base_theta, (len(theta), 1)), theta])

    def model(self, N, D, U=None) -> _RepetitionModel:
        return _RepetitionModel(self, self.full_form.model(N, D, U))

    def starts(self, model, logy) -> np.ndarray:
        return np.array([(d, n) for d in _R_GRID for n in _R_GRID])

    def raw(self, theta) -> dict[str, np.ndarray]:
        return self.full_form.raw(self.full(theta))

    def params(self, theta) -> dict[str, np.ndarray]:
        return self.full_form.params(self.full(theta))


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
    form: ChinchillaForm | RepetitionForm
    data: dict[str, np.ndarray]  # N, D, (U), L
    theta: np.ndarray
    boot: np.ndarray
    objective: float
    delta: float
    level: float
    columns: dict[str, str]
    procedure: str | None = None  # data-constrained only: "paper" or "joint"
    base: dict | None = None  # the paper's procedure: where the fixed terms came from
    outliers: dict = field(default_factory=lambda: {"policy": "none", "dropped_lines": []})

    def at_bound(self) -> list[str]:
        """Free parameters whose estimate ended at (within 1e-6 of) a bound of the box."""
        lo, hi = self.form.bounds[:, 0], self.form.bounds[:, 1]
        hit = (np.abs(self.theta - lo) < 1e-6) | (np.abs(self.theta - hi) < 1e-6)
        return [name for name, h in zip(self.form.free_names, hit) if h]

    def params(self) -> dict[str, dict]:
        point, samples = self.form.params(self.theta), self.form.params(self.boot)
        out = {k: robust.estimate(point[k][0], samples[k], self.level) for k in point}
        for name in self.form.fixed_names:
            out[name] = {**_point_only(point[name][0]), "fixed": "from the base law"}
        for name, to in self.form.tied.items():
            out[name] = {**out[name], "tied": to}
        for name in self.at_bound():
            out[name] = {**_point_only(point[name][0]), "note": AT_BOUND}
        return out

    def warnings(self) -> list[str]:
        return [
            f"{name} ended at a bound of its range ({self.params()[name]['value']:.4g}): "
            "it is not identified by these data, so no interval is given"
            for name in self.at_bound()
        ]

    def law(self) -> ScalingLaw:
        return ScalingLaw(
            self.form.name, {k: float(v[0]) for k, v in self.form.params(self.theta).items()}
        )

    def compute_optimal_summary(self) -> dict:
        """Allocation exponents and tokens per parameter implied by the fit, under C = 6ND.
        With the base terms fixed these follow from the base alone: no interval here."""
        c_ref = float(np.median(6 * self.data["N"] * self.data["D"]))
        point, samples = self.form.params(self.theta), self.form.params(self.boot)

        def implied(p):
            alpha, beta = p["alpha"], p["beta"]
            with np.errstate(divide="ignore", invalid="ignore"):
                a, b = beta / (alpha + beta), alpha / (alpha + beta)
                log_g = (np.log(alpha * p["A"]) - np.log(beta * p["B"])) / (alpha + beta)
                ratio = np.exp(-2 * log_g + (b - a) * np.log(c_ref / 6))
            return a, b, ratio

        (a, b, r), (a_s, b_s, r_s) = implied(point), implied(samples)
        if self.form.fixed_names:
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
        out.update(self.compute_optimal_summary())
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
    (else a Chinchilla fit, tied if ``tie``, to the single-epoch rows, U = D), then R_D*
    and R_N* alone; ``"joint"``: all seven at once.
    """
    if form not in FORMS:
        raise UserError(f"unknown scaling form {form!r}; choose from {', '.join(FORMS)}.")
    if procedure not in PROCEDURES:
        raise UserError(f"--procedure must be one of {', '.join(PROCEDURES)}, not {procedure!r}.")
    data, outliers = _drop_outliers(data, drop_highest, drop_above)
    N, D, L = data["N"], data["D"], data["L"]
    refs = (float(np.exp(np.mean(np.log(N)))), float(np.exp(np.mean(np.log(D)))))
    base_info = None
    if form == "chinchilla":
        fitted = (TiedChinchillaForm if tie else ChinchillaForm)(*refs)
    elif procedure == "joint":
        if base is not None or tie:
            raise UserError("--base and --tie belong to the paper's procedure; drop them.")
        fitted = DataConstrainedForm(*refs)
    else:
        if base is not None and tie:
            raise UserError(
                "--tie applies to the base fit; fit the base law with --tie instead of "
                "passing both --tie and --base."
            )
        if base is None:
            base, base_source = _single_epoch_base(data, tie, delta), "the CSV's single-epoch rows"
        base_info = {"source": base_source, **base.params}
        fitted = RepetitionForm(*refs, base)
    _check_identifiable(data, form, fitted)
    model, logy = fitted.model(N, D, data.get("U")), np.log(L)
    theta, obj = robust.fit_multistart(model, logy, fitted.starts(model, logy), delta, n_polish=8)
    rng = np.random.default_rng(seed)
    boot = robust.bootstrap(model, theta, logy, delta, n_boot, rng, kind="pairs")
    return ScalingFit(
        fitted,
        data,
        theta,
        boot,
        obj,
        delta,
        level,
        columns or {},
        procedure=None if form == "chinchilla" else procedure,
        base=base_info,
        outliers=outliers,
    )


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


def _single_epoch_base(data: dict, tie: bool, delta: float) -> ScalingLaw:
    """A Chinchilla fit to the rows trained for one epoch (U = D): the paper's base."""
    single = data["U"] >= data["D"] * (1 - 1e-9)
    need = len((TiedChinchillaForm if tie else ChinchillaForm).free_names) + 2
    if single.sum() < need:
        raise UserError(
            f"the paper's data-constrained procedure needs fixed Chinchilla terms: the CSV has "
            f"{int(single.sum())} single-epoch rows (unique_tokens = tokens), fewer than the "
            f"{need} a base fit needs; pass --base LAW.json or --procedure joint."
        )
    rows = {k: v[single] for k, v in data.items() if k != "U"}
    return fit_scaling(rows, "chinchilla", n_boot=0, delta=delta, tie=tie).law()


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
    """A fitted law's point estimates: what the planner needs to predict and allocate."""

    form: str
    params: dict[str, float]

    def _form_and_theta(self):
        p = self.params
        form = (ChinchillaForm if self.form == "chinchilla" else DataConstrainedForm)(1.0, 1.0)
        theta = [math.log(p["E"]), math.log(p["A"]), math.log(p["B"]), p["alpha"], p["beta"]]
        if self.form == "data-constrained":
            theta += [math.log(p["R_D_star"]), math.log(p["R_N_star"])]
        return form, np.array([theta])

    def predict(self, N, D, U=None) -> np.ndarray:
        """Loss at N parameters and D training tokens, of which U unique (default D)."""
        N, D = np.broadcast_arrays(np.asarray(N, dtype=float), np.asarray(D, dtype=float))
        U = D if U is None else np.minimum(np.broadcast_to(np.asarray(U, dtype=float), D.shape), D)
        form, theta = self._form_and_theta()
        shape = N.shape
        model = form.model(N.ravel(), D.ravel(), U.ravel())
        return np.exp(robust.log_pred(model, theta)[0]).reshape(shape)

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
    return ScalingLaw(form, params)


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
    """One CSV row per run: its parameter count, final tokens and final or best val loss."""
    if loss not in ("final", "best"):
        raise UserError(f"--loss must be final or best, not {loss!r}.")
    rows = []
    for run in runs:
        count = run.info.get("params", {}).get(params)
        if not isinstance(count, (int, float)) or count <= 0:
            raise UserError(
                f"{run.path}/run.json has no params.{params}; "
                "finish the run or pass a different --params."
            )
        val = run.evals["val_loss"]
        if val.size == 0:
            raise UserError(f"{run.path} has no evaluations; train it longer before sweeping.")
        lines = run.lines
        rows.append(
            {
                "run": str(run.path),
                "params": int(count),
                "tokens": _last_finite(lines["tokens"]),
                "unique_tokens": _last_finite(lines["unique_tokens"]),
                "loss": float(val[-1] if loss == "final" else val.min()),
                "flops": _last_finite(lines["flops"]),
                "wall_s": _last_finite(lines["wall_s"]),
            }
        )
    return rows


def _last_finite(values: np.ndarray):
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return ""
    v = float(finite[-1])
    return int(v) if v.is_integer() else v
