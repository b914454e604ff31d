"""Fit one run's validation curve with every form, check them on held-out tail points,
and extrapolate: loss at a later t, and the tokens and wall-clock to reach a target loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from oneepoch.analysis import extrapolate, robust
from oneepoch.analysis.curves import CurveFit, PowerForm, ScheduleForm, fit_curve, param_names
from oneepoch.analysis.lr_schedule import DEFAULT_DECAY, LRSchedule
from oneepoch.analysis.runs import Run, eval_curve
from oneepoch.errors import UserError

# name -> (form family, whether it fits a floor). The floor-free variants exist for
# extrapolation: from the first part of a run the floor (E, L0) is barely identified and
# absorbs the bend of the early transient, which makes the floored forms over-predict
# later losses (docs/analysis.md has the measurements).
FORM_SPECS = {
    "power": (PowerForm, True),
    "schedule": (ScheduleForm, True),
    "power-nofloor": (PowerForm, False),
    "schedule-nofloor": (ScheduleForm, False),
}
FORMS = tuple(FORM_SPECS)
N_PARAMS = {
    name: len(param_names(cls.ALL_PARAMS, floor)) for name, (cls, floor) in FORM_SPECS.items()
}
# Fits start after this many warm-ups by default: right after the warm-up the loss is
# still in its initial fast drop, which no form here describes (docs/analysis.md).
SKIP_WARMUPS = 2
# Beyond this multiple of the last fitted t a prediction counts as an extrapolation.
EXTRAPOLATION_RATIO = 1.25


@dataclass
class RunFit:
    run: Run
    x_name: str  # "tokens" or "steps"
    fits: dict[str, CurveFit]
    settings: dict  # min_step, use_first, cutoff_tokens, ...
    tail_check: dict
    wall_rate: tuple[float, float] | None  # (offset_s, tokens_per_s)
    predictions: dict = field(default_factory=dict)  # filled by predict_at / time_to_target

    def tokens_at(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        return x if self.x_name == "tokens" else self.run.steps_to_tokens(x)

    def steps_at(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        return x if self.x_name == "steps" else self.run.tokens_to_steps(x)

    def wall_at(self, x) -> np.ndarray | None:
        if self.wall_rate is None:
            return None
        offset, rate = self.wall_rate
        return offset + self.tokens_at(x) / rate

    def predict_at(self, x: float) -> dict:
        """Loss at x (the fit's units) under each form; with the observed loss when the
        full run got there (so an extrapolation from --use-first can be checked)."""
        out = {"x": float(x), "forms": {}}
        for name, fit in self.fits.items():
            out["forms"][name] = extrapolate.predict_loss(fit, x)
        out["forecast"] = self._forecast(
            out["forms"], extrapolating=x > EXTRAPOLATION_RATIO * self.x_fit_end
        )
        observed = _observed_loss_at(self.run, self.x_name, x)
        out["observed_loss"] = observed
        self.predictions["predict_at"] = out
        return out

    def time_to_target(self, target: float) -> dict:
        """Tokens, steps and wall-clock to first reach ``target`` under each form."""
        if not target > 0:
            raise UserError(f"--target-loss must be a positive loss, not {target}.")
        out = {"loss": float(target), "forms": {}, "observed": _observed_cost(self.run, target)}
        for name, fit in self.fits.items():
            point, samples = extrapolate.x_to_reach(fit, target)
            costs = {
                "tokens": (self.tokens_at(point), self.tokens_at(samples)),
                "steps": (self.steps_at(point), self.steps_at(samples)),
            }
            if self.wall_rate is not None:
                costs["wall_s"] = (self.wall_at(point), self.wall_at(samples))
            entry = {key: robust.estimate(p, s, fit.level, fit.df) for key, (p, s) in costs.items()}
            entry["reached"] = bool(np.isfinite(point))
            entry["p_reach"] = float(np.mean(np.isfinite(samples))) if samples.size else None
            out["forms"][name] = entry
        # A target below every fitted loss is reached, if at all, past the fitted range.
        lowest = min(float(fit.loss.min()) for fit in self.fits.values())
        out["forecast"] = self._forecast(out["forms"], extrapolating=target < lowest)
        self.predictions["target"] = out
        return out

    @property
    def x_fit_end(self) -> float:
        return float(max(fit.x[-1] for fit in self.fits.values()))

    def forecast_forms(self, extrapolating: bool) -> list[str]:
        """The forms whose (geometric-mean) estimate to trust; measured in docs/analysis.md.

        Within the fitted range: the one that predicted held-out tail points best. Past it,
        a form without a floor, since a floor fitted to the first part of a curve takes the
        bend left by the initial fast drop for saturation and over-predicts later losses:
        - constant LR (or none logged): the power law, L = A t^-alpha;
        - LR decay inside the fitted range: the schedule-aware law, which measured it;
        - LR decay only after it: the annealing term is unknown, so the schedule-aware law
          without it over-predicts while the power law ignores the schedule: both.
        """
        if extrapolating:
            power, sched = "power-nofloor", "schedule-nofloor"
            form = self.fits[sched].form if sched in self.fits else None
            if form is not None and form.annealing_unmeasured and power in self.fits:
                return [sched, power]
            if form is not None and not form.schedule.constant:
                return [sched]
            for name in (power, sched):
                if name in self.fits:
                    return [name]
        better = self.tail_check.get("better")
        return [better if better in self.fits else next(iter(self.fits))]

    def _forecast(self, by_form: dict, extrapolating: bool) -> dict:
        """What to expect: the geometric mean of ``forecast_forms``' estimates. Past the
        fitted range the interval also spans the same forms with a floor: the first part
        of a curve cannot show whether a floor is real."""
        central = self.forecast_forms(extrapolating)
        spans = list(central)
        if extrapolating:
            spans += [n.removesuffix("-nofloor") for n in central]
            spans = [n for n in dict.fromkeys(spans) if n in by_form]
        out = {"form": central[0], "central": central, "spans": spans}
        entry = by_form[central[0]]
        if "value" in entry:  # a loss estimate
            return {**out, **_combine([by_form[n] for n in central], [by_form[n] for n in spans])}
        for key, est in entry.items():  # a cost to a target: tokens, steps, wall_s, ...
            if isinstance(est, dict):
                est = _combine([by_form[n][key] for n in central], [by_form[n][key] for n in spans])
            out[key] = est
        out["reached"] = out["tokens"]["value"] is not None
        return out

    def to_json(self) -> dict:
        forms = {}
        for name, fit in self.fits.items():
            body = fit.to_json()
            forms[name] = {**body.pop("params"), "param_names": list(fit.form.param_names), **body}
        return {
            "run": str(self.run.path),
            "x": self.x_name,
            **self.settings,
            "forms": forms,
            "tail_check": self.tail_check,
            "throughput": None
            if self.wall_rate is None
            else {"offset_s": self.wall_rate[0], "tokens_per_s": self.wall_rate[1]},
            **self.predictions,
        }


def fit_run(
    run: Run,
    *,
    x: str = "tokens",
    forms=None,
    use_first: float | None = None,
    min_step: float | None = None,
    tail_fraction: float = 0.2,
    n_boot: int = 200,
    level: float = robust.DEFAULT_LEVEL,
    seed: int = 0,
    decay: float = DEFAULT_DECAY,
) -> RunFit:
    """Fit ``forms`` to the run's evaluations after ``min_step`` (default: twice the
    warm-up, ``SKIP_WARMUPS``).

    ``forms`` None: every form the run supports (the schedule forms need a logged LR) and
    has enough evaluations for; named forms must all be fitted. ``use_first`` keeps only
    evaluations within that fraction of the run's final tokens; the throughput is then
    measured on that part too. The logged LR schedule is used in full: it is an input
    planned in advance, not an outcome.
    """
    explicit = forms is not None
    if forms is None:
        forms = FORMS if run.lr_log() is not None else ("power", "power-nofloor")
    for name in forms:
        if name not in FORM_SPECS:
            raise UserError(f"unknown form {name!r}; choose from {', '.join(FORMS)}.")
    curve = eval_curve(run, x)
    keep = np.ones(curve["steps"].shape, dtype=bool)
    cutoff = None
    if use_first is not None:
        if not 0 < use_first <= 1:
            raise UserError(f"--use-first must be a fraction in (0, 1], not {use_first}.")
        cutoff = use_first * run.final_tokens
        keep &= curve["tokens"] <= cutoff
    if min_step is None:
        need = max(N_PARAMS[name] for name in forms) + 2
        min_step = _default_min_step(run.warmup_steps, curve["steps"][keep], need)
    min_step = float(min_step)
    keep &= curve["steps"] > min_step
    x_fit, loss_fit = curve["x"][keep], curve["loss"][keep]

    short = [name for name in forms if x_fit.size < N_PARAMS[name] + 2]
    if short and (explicit or len(short) == len(forms)):
        name = min(short, key=N_PARAMS.get)
        raise UserError(
            f"{run.path} has {x_fit.size} evaluations after step {min_step:g}"
            f"{' within --use-first' if cutoff else ''}, but the {name} form needs at"
            f" least {N_PARAMS[name] + 2}; evaluate more often, train longer or lower"
            " --min-step."
        )
    forms = tuple(name for name in forms if name not in short)
    built = {name: _build_form(name, run, x, x_fit, decay) for name in forms}
    rng = np.random.default_rng(seed)
    fits = {
        name: fit_curve(form, x_fit, loss_fit, n_boot=n_boot, level=level, rng=rng)
        for name, form in built.items()
    }
    backtest = {name: _backtest(run, name, x, x_fit, loss_fit, decay) for name in built}
    for name, fit in fits.items():
        fit.with_drift(backtest[name]["log_error_per_log_distance"] or 0.0, rng)
    settings = {
        "forms_left_out": {n: f"needs {N_PARAMS[n] + 2} evaluations" for n in short},
        "min_step": min_step,
        "use_first": use_first,
        "cutoff_tokens": cutoff,
        "n_eval_points": int(curve["x"].size),
        "n_fit_points": int(x_fit.size),
        "level": level,
        "lr_decay_factor": decay if any(FORM_SPECS[n][0] is ScheduleForm for n in built) else None,
        "backtest": backtest,
    }
    tail = _tail_check(run, x, x_fit, loss_fit, forms, tail_fraction, decay)
    return RunFit(run, x, fits, settings, tail, run.wall_rate(max_tokens=cutoff))


def _default_min_step(warmup: int, steps: np.ndarray, need: int) -> float:
    """SKIP_WARMUPS warm-ups, or, where that leaves fewer than ``need`` evaluations (a long
    warm-up, a short --use-first), as late as leaves ``need``, but never inside the
    warm-up itself."""
    after = np.sort(steps[steps > warmup])
    if after.size <= need:
        return float(warmup)
    if np.sum(after > SKIP_WARMUPS * warmup) >= need:
        return float(SKIP_WARMUPS * warmup)
    return float(after[-need - 1])  # keeps the last ``need``


def _combine(central: list[dict], spans: list[dict]) -> dict:
    """The geometric mean of the central estimates' values, with an interval covering
    every spanned estimate's interval (None, an unbounded side, wins)."""
    values = [e["value"] for e in central]
    value = None
    if all(v is not None and v > 0 for v in values):
        value = float(np.exp(np.mean(np.log(values))))
    lows = [e["ci_low"] for e in spans]
    highs = [e["ci_high"] for e in spans]
    ses = [e["se"] for e in spans if e["se"] is not None]
    return {
        "value": value,
        "ci_low": None if None in lows else min(lows),
        "ci_high": None if None in highs else max(highs),
        "se": max(ses) if ses else None,
    }


def _build_form(name: str, run: Run, x_name: str, fit_x: np.ndarray, decay: float):
    family, floor = FORM_SPECS[name]
    if family is PowerForm:
        t_ref = float(np.exp(np.mean(np.log(fit_x)))) if fit_x.size else 1.0
        return PowerForm(t_ref, floor)
    log = run.lr_log()
    if log is None:
        raise UserError(
            f"{run.path} logs no learning rate, which the {name} form needs; "
            "pass --forms power,power-nofloor."
        )
    to_steps = _identity if x_name == "steps" else run.tokens_to_steps
    return ScheduleForm(LRSchedule(*log, decay=decay), to_steps, fit_x, floor)


def _identity(x) -> np.ndarray:
    return np.asarray(x, dtype=float)


def _refit(run, name, x_name, x, loss, m, decay) -> CurveFit:
    """The form fitted to the first m points only (no bootstrap)."""
    form = _build_form(name, run, x_name, x[:m], decay)
    return fit_curve(form, x[:m], loss[:m], n_boot=0)


def _backtest(run, name, x_name, x, loss, decay) -> dict:
    """How fast the form's error grows with extrapolation distance, from the data alone.

    Refit on the first m points for every m from half the points (or the fewest the form
    can take) up to all but the last, predict the last point, and divide the log errors
    by the log distances log(x_last / x_m): their root-mean-square ratio (sum e^2 / sum
    d^2) is the drift rate that widens intervals past the fitted range. It includes the
    last point's own noise, so it errs on the wide side.
    """
    n, first = x.size, max(N_PARAMS[name] + 2, (x.size + 1) // 2)
    errors, distances = [], []
    for m in range(first, n - 1):
        predicted = _refit(run, name, x_name, x, loss, m, decay).predict(x[-1:])[0]
        errors.append(np.log(predicted / loss[-1]))
        distances.append(np.log(x[-1] / x[m - 1]))
    if not errors:
        return {"origins": 0, "log_error_per_log_distance": None}
    errors, distances = np.array(errors), np.array(distances)
    return {
        "origins": int(errors.size),
        "log_error_per_log_distance": float(np.sqrt(np.sum(errors**2) / np.sum(distances**2))),
    }


def _tail_check(run, x_name, x, loss, forms, tail_fraction, decay) -> dict:
    """Refit each form without the last points and score its predictions of them."""
    n_tail = max(2, int(round(tail_fraction * x.size)))
    n_head = x.size - n_tail
    need = max(N_PARAMS[f] for f in forms) + 2
    if n_head < need:
        return {"n_holdout": 0, "skipped": f"needs at least {need + n_tail} fitted points"}
    rmse = {}
    for name in forms:
        fit = _refit(run, name, x_name, x, loss, n_head, decay)
        err = np.log(fit.predict(x[n_head:])) - np.log(loss[n_head:])
        rmse[name] = float(np.sqrt(np.mean(err**2)))
    return {
        "n_holdout": n_tail,
        "holdout_from": float(x[n_head]),
        "rmse_log": rmse,
        "better": min(rmse, key=rmse.get),
    }


def _observed_loss_at(run: Run, x_name: str, x: float) -> float | None:
    curve = eval_curve(run, x_name)
    xs, loss = curve["x"], curve["loss"]
    if xs.size == 0 or not xs[0] <= x <= xs[-1]:
        return None
    return float(np.exp(np.interp(np.log(x), np.log(xs), np.log(loss))))


def _observed_cost(run: Run, target: float) -> dict | None:
    """Tokens, steps and wall-clock at which the run's own eval curve first reached target."""
    ev = run.evals
    index, frac = extrapolate.first_crossing(ev["val_loss"][None], target)
    if index[0] < 0:
        return None
    return {
        key: float(extrapolate.value_at_crossing(ev[col], index, frac)[0])
        for key, col in (("tokens", "tokens"), ("steps", "step"), ("wall_s", "wall_s"))
    }
