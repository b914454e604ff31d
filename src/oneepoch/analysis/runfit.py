"""Fit one run's validation curve with every form, check them on held-out tail points,
and extrapolate: loss at a later t, and the tokens and wall-clock to reach a target loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

from oneepoch.analysis import extrapolate, robust
from oneepoch.analysis.curves import (
    CurveFit,
    PowerForm,
    ScheduleForm,
    fit_curve,
    param_names,
)
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
    "power-avgfloor": (PowerForm, True),
    "schedule-avgfloor": (ScheduleForm, True),
}
# The floored forms with their floor averaged over the values the curve allows
# (``curves.fit_curve(..., floor="averaged")``): what the forecast rests on past the fitted range.
FLOOR_AVERAGED = {"power-avgfloor", "schedule-avgfloor"}
FORMS = tuple(FORM_SPECS)
N_PARAMS = {
    name: len(param_names(cls.ALL_PARAMS, floor)) for name, (cls, floor) in FORM_SPECS.items()
}
# Fits start after this many warm-ups by default: right after the warm-up the loss is
# still in its initial fast drop, which no form here describes (docs/analysis.md).
SKIP_WARMUPS = 2
# Without a warm-up to go by (none configured, or no LR logged), the fit may start at these
# shares of the last fitted step; the curve decides (``_fast_drop_end``).
FAST_DROP_STARTS = (0.0, 0.01, 0.03, 0.1)
# Beyond this multiple of the last fitted t a prediction counts as an extrapolation.
EXTRAPOLATION_RATIO = 1.25
# Rolling-origin backtests: each form is refitted on the first m fitted points for at most
# this many origins m and predicts the last points of the fitted range; origins lie
# between these ratios of t below those points (the forecasts asked of `fit` are a few
# times past the fitted range), or anywhere when none do.
BACKTEST_ORIGINS = 8
BACKTEST_RATIOS = (1.5, 10.0)
# A forecast warns when the form it rests on fails one of its own checks.
MIN_VALID_DECADES = 0.3
MAX_RESIDUAL_LAG1 = 0.5
MIN_FIT_POINTS = 8
# ... and when the fitted range ends within this share of the data's unigram or bigram loss
# (data/ngram.py): models sit near those levels for a while and then fall faster, which no
# form fitted before that foresees (docs/analysis.md, "Plateaus at the n-gram levels").
NGRAM_PLATEAU_MARGIN = 0.1
NGRAM_CONTEXT = {"unigram": "no context", "bigram": "only the previous token"}


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
        points, samples = {}, {}
        for name, fit in self.fits.items():
            out["forms"][name] = extrapolate.predict_loss(fit, x)
            points[name], samples[name] = fit.predict([x])[0], fit.predict_samples([x])[:, 0]
        extrapolating = x > EXTRAPOLATION_RATIO * self.x_fit_end
        mix = self._forecast(points, samples, extrapolating)
        out["forecast"] = _forecast_entry(mix, {"loss": lambda v: v})["loss"] | _forecast_info(mix)
        # near the range the forecast is the tail check's winner: its error on held-out
        # points just past a fitted range is what one evaluation just past this one may show
        tail_error = None if extrapolating else self.tail_check.get("rmse_log", {}).get(mix["form"])
        out["forecast"]["evaluation"] = evaluation_interval(
            out["forecast"], self.settings["evaluation_scatter"], self.settings["level"], tail_error
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
        converters = {"tokens": self.tokens_at, "steps": self.steps_at}
        if self.wall_rate is not None:
            converters["wall_s"] = self.wall_at
        points, samples = {}, {}
        for name, fit in self.fits.items():
            points[name], samples[name] = extrapolate.x_to_reach(fit, target)
            mix = {"point": points[name], "samples": samples[name], "level": fit.level}
            out["forms"][name] = _forecast_entry({**mix, "df": fit.interval_df}, converters)
        # A target below every fitted loss is reached, if at all, past the fitted range.
        lowest = min(float(fit.loss.min()) for fit in self.fits.values())
        mix = self._forecast(points, samples, extrapolating=target < lowest)
        out["forecast"] = _forecast_entry(mix, converters) | _forecast_info(mix)
        self.predictions["target"] = out
        return out

    @property
    def x_fit_end(self) -> float:
        return float(max(fit.x[-1] for fit in self.fits.values()))

    def forecast_weights(self, extrapolating: bool) -> dict[str, float]:
        """How much each form counts in the forecast (docs/analysis.md has the evidence).

        Within the fitted range: the form that predicted held-out tail points best. Past
        it, the run's own rolling-origin backtests decide: within each family (power,
        schedule) the form with a floor and the one without are weighed by the inverse
        square of their backtested drift rates, so the form whose refits on early parts of
        the range predicted the later part better dominates. Which families count follows
        the LR schedule: constant (or none logged): all forms compete as one family (the
        schedule forms' S1 also counts the warm-up); decay inside the fitted range (C
        measured): schedule; decay only after it (C unknown): both, half each, the
        schedule form without its annealing term being too high and the power law, which
        ignores the LR, too low.
        """
        if not extrapolating:
            better = self.tail_check.get("better")
            return {better if better in self.fits else next(iter(self.fits)): 1.0}
        families = self._forecast_families()
        weights: dict[str, float] = {}
        backtest = self.settings["backtest"]
        for family in families:
            floored = f"{family}-avgfloor" if f"{family}-avgfloor" in self.fits else family
            members = [n for n in (floored, f"{family}-nofloor") if n in self.fits]
            rates = {n: backtest[n]["log_error_per_log_distance"] for n in members}
            if floored in FLOOR_AVERAGED and None in rates.values():
                # too few points to backtest: the floor-averaged form, which already
                # counts a floor near 0 among the floors it averages over
                rates = {floored: rates[floored]}
            family_weights = _inverse_square_weights(rates)
            for name, weight in family_weights.items():
                weights[name] = weights.get(name, 0.0) + weight / len(families)
        return weights

    def _forecast_families(self) -> list[str]:
        schedule = next((f.form for n, f in self.fits.items() if n.startswith("schedule")), None)
        has_power = any(n.startswith("power") for n in self.fits)
        if schedule is None or not has_power:
            return ["power" if has_power else "schedule"]
        if schedule.schedule.constant:
            return ["schedule"]
        if schedule.annealing_unmeasured:
            return ["schedule", "power"]
        return ["schedule"]

    def _forecast(self, points: dict, samples: dict, extrapolating: bool) -> dict:
        """The forecast: the weighted geometric mean of the forms' point estimates, its
        interval from the mixture of their bootstrap replicates (each form contributing
        replicates in proportion to its weight), so disagreement between forms widens it."""
        weights = self.forecast_weights(extrapolating)
        names = [n for n, w in sorted(weights.items(), key=lambda kv: -kv[1]) if w > 0]
        with np.errstate(divide="ignore", invalid="ignore"):
            log_point = sum(weights[n] * np.log(points[n]) for n in names)
        n_boot = min(len(samples[n]) for n in names)
        counts = _split_count(n_boot, [weights[n] for n in names])
        mixed = np.concatenate([samples[n][:k] for n, k in zip(names, counts)])
        fit = self.fits[names[0]]
        return {
            "form": names[0],
            "central": names,
            "weights": {n: round(float(weights[n]), 4) for n in names},
            "point": float(np.exp(log_point)),
            "samples": mixed,
            "level": fit.level,
            "df": fit.interval_df,
            "warnings": self._forecast_warnings(names[0]) if extrapolating else [],
            "near_ngram_levels": self._near_ngram_levels(names[0])[1] if extrapolating else [],
            "notes": self._forecast_notes(extrapolating),
        }

    def _forecast_warnings(self, name: str) -> list[str]:
        """One line per check the forecast fails: of the form it rests on, and of the run
        (near a plateau at an n-gram level, or going over its data more than once)."""
        fit = self.fits[name]
        out = []
        decades = fit.valid_range()["decades"]
        if decades < MIN_VALID_DECADES:
            out.append(
                f"the forecast rests on {name}, which holds over only {decades:.2f} decades "
                f"of t (less than {MIN_VALID_DECADES}): evaluate more often or fit more of the run"
            )
        lag1 = fit.goodness()["residual_lag1_autocorr"]
        if lag1 is not None and lag1 > MAX_RESIDUAL_LAG1:
            out.append(
                f"the forecast rests on {name}, whose residuals have lag-1 autocorrelation "
                f"{lag1:.2f} (above {MAX_RESIDUAL_LAG1}): it misses a bend of the curve and "
                "its interval is too narrow"
            )
        if fit.x.size < MIN_FIT_POINTS:
            out.append(
                f"the forecast rests on {name}, fitted to only {fit.x.size} points (fewer "
                f"than {MIN_FIT_POINTS}): evaluate more often"
            )
        if self.run.lr_log() is None:
            out.append(
                f"{self.run.path} logs no learning rate: the forecast assumes it was constant"
            )
        fitted_end, near = self._near_ngram_levels(name)
        for level_name in near:
            level = self.run.ngram_losses[level_name]
            out.append(
                f"the fitted range ends at a loss of {fitted_end:.3f}, within "
                f"{NGRAM_PLATEAU_MARGIN:.0%} of the data's {level_name} loss {level:.3f} (a "
                f"model that sees {NGRAM_CONTEXT[level_name]}): models often sit near that "
                "level for a while and then fall faster, and when is not in the curve so far, "
                "so the forecast may be far off; fit a later part of the run"
            )
        if self.run.epochs > 1:
            out.append(
                f"{self.run.path} goes over its data {self.run.epochs:g} times: the forms assume "
                "every token is new, but repeated tokens are worth less and the validation "
                "loss may turn up, so past the fitted range the forecast is likely too low"
            )
        return out

    def _near_ngram_levels(self, name: str) -> tuple[float, list[str]]:
        """(the loss the form ``name`` fits at the end of its range, the data's n-gram
        levels (run.json) within NGRAM_PLATEAU_MARGIN of it)."""
        fit = self.fits[name]
        end = float(fit.predict([fit.x[-1]])[0])
        levels = self.run.ngram_losses.items()
        return end, [n for n, level in levels if abs(end / level - 1) < NGRAM_PLATEAU_MARGIN]

    def _forecast_notes(self, extrapolating: bool) -> list[str]:
        schedule = next((f.form for n, f in self.fits.items() if n.startswith("schedule")), None)
        if extrapolating and schedule is not None and schedule.annealing_unmeasured:
            return [
                "the forecast leaves out the loss drop of the LR decay still to come: the "
                "fitted range shows too little decay to measure the annealing term C (fit "
                "with --with RUN, a run of the same setup whose LR decayed, to include it)"
            ]
        return []

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
    # C is fitted only where the LR decays; under a constant LR it is no free parameter
    log = run.lr_schedule_log()
    constant = log is not None and LRSchedule(*log).constant
    n_params = {n: N_PARAMS[n] - (constant and FORM_SPECS[n][0] is ScheduleForm) for n in FORMS}
    curve = eval_curve(run, x)
    need = max(n_params[name] for name in forms) + 2
    keep, cutoff, min_step = _fitted_evaluations(run, curve, use_first, min_step, need)
    x_fit, loss_fit = curve["x"][keep], curve["loss"][keep]

    short = [name for name in forms if x_fit.size < n_params[name] + 2]
    if short and (explicit or len(short) == len(forms)):
        name = min(short, key=n_params.get)
        raise UserError(
            f"{run.path} has {x_fit.size} evaluations after step {min_step:g}"
            f"{' within --use-first' if cutoff else ''}, but the {name} form needs at"
            f" least {n_params[name] + 2}; evaluate more often, train longer or lower"
            " --min-step."
        )
    forms = tuple(name for name in forms if name not in short)
    built = {name: _build_form(name, run, x, x_fit, decay) for name in forms}
    fits, backtest = _fit_forms(built, x_fit, loss_fit, n_boot, level, seed)
    settings = {
        "forms_left_out": {n: f"needs {n_params[n] + 2} evaluations" for n in short},
        "min_step": min_step,
        "use_first": use_first,
        "cutoff_tokens": cutoff,
        "n_eval_points": int(curve["x"].size),
        "n_fit_points": int(x_fit.size),
        "level": level,
        "lr_decay_factor": decay if any(FORM_SPECS[n][0] is ScheduleForm for n in built) else None,
        "backtest": backtest,
        "evaluation_scatter": evaluation_scatter(x_fit, loss_fit),
    }
    tail = _tail_check(fits, tail_fraction)
    return RunFit(run, x, fits, settings, tail, run.wall_rate(max_tokens=cutoff))


def _fitted_evaluations(run: Run, curve: dict, use_first, min_step, need: int):
    """(mask of the evaluations to fit, the --use-first token cutoff or None, min_step):
    those within ``use_first`` of the run's tokens and after ``min_step`` (by default
    chosen so that ``need`` evaluations remain, ``_default_min_step``)."""
    keep = np.ones(curve["steps"].shape, dtype=bool)
    cutoff = None
    if use_first is not None:
        if not 0 < use_first <= 1:
            raise UserError(f"--use-first must be a fraction in (0, 1], not {use_first}.")
        cutoff = use_first * run.final_tokens
        keep &= curve["tokens"] <= cutoff
    if min_step is None:
        min_step = _default_min_step(run, curve["steps"][keep], curve["loss"][keep], need)
    min_step = float(min_step)
    keep &= curve["steps"] > min_step
    return keep, cutoff, min_step


def _fit_forms(built: dict, x_fit, loss_fit, n_boot: int, level: float, seed: int):
    """(fits, backtests): each form fitted with its bootstrap, backtested, and widened by
    the drift its backtest showed."""
    rng = np.random.default_rng(seed)
    averaged_rng = np.random.default_rng((seed, 1))  # leaves the other forms' draws as they were
    fits = {
        name: fit_curve(
            form,
            x_fit,
            loss_fit,
            n_boot=n_boot,
            level=level,
            rng=averaged_rng if name in FLOOR_AVERAGED else rng,
            floor="averaged" if name in FLOOR_AVERAGED else "fitted",
        )
        for name, form in built.items()
    }
    backtest = {name: _backtest(fit) for name, fit in fits.items()}
    for name, fit in fits.items():
        fit.with_drift(backtest[name]["log_error_per_log_distance"] or 0.0, rng)
    return fits, backtest


def _default_min_step(run: Run, steps: np.ndarray, loss: np.ndarray, need: int) -> float:
    """SKIP_WARMUPS warm-ups, or, where that leaves fewer than ``need`` evaluations (a long
    warm-up, a short --use-first), as late as leaves ``need``, but never inside the
    warm-up itself. With no warm-up to go by (none configured, no LR logged), where the
    curve's fast initial drop is over (``_fast_drop_end``)."""
    warmup = run.warmup_steps
    if warmup == 0 or run.lr_log() is None:
        return _fast_drop_end(steps, loss, need)
    after = np.sort(steps[steps > warmup])
    if after.size <= need:
        return float(warmup)
    if np.sum(after > SKIP_WARMUPS * warmup) >= need:
        return float(SKIP_WARMUPS * warmup)
    return float(after[-need - 1])  # keeps the last ``need``


def _fast_drop_end(steps: np.ndarray, loss: np.ndarray, need: int) -> float:
    """Where the fast initial drop is over, decided from the curve itself.

    No form here describes the drop, so a fit that includes it bends to it. The fit may
    start at each of FAST_DROP_STARTS (shares of the last step) that leaves ``need`` + 3
    points, the fewest with which ``_backtest`` has an origin (its 3 target points after
    the first ``need``); asking for one more kept 30 log-spaced evaluations from starting
    past the drop (docs/analysis.md). A start counts only when its floored power-law fit holds from its first point
    on (``CurveFit.valid_range``: no systematic departure beyond 3 standard errors of the
    model-free noise), which rules out starts inside a drop the noise does not hide; of
    those, the one whose power-law fits (with and without a floor) backtest best
    (``_backtest``: the lowest drift rate) wins. When none holds, the latest start.
    """
    order = np.argsort(steps)
    steps, loss = steps[order], loss[order]
    best_rate, best_start, latest = np.inf, None, 0.0
    for share in FAST_DROP_STARTS:
        keep = steps > share * steps[-1]
        if keep.sum() < need + 3:
            break
        latest = share * float(steps[-1])
        x, y = steps[keep], loss[keep]
        t_ref = float(np.exp(np.mean(np.log(x))))
        fits = [fit_curve(PowerForm(t_ref, floor), x, y, n_boot=0) for floor in (True, False)]
        held = fits[0].valid_range()
        if held["t_min"] is None or held["t_min"] > x[0]:
            continue
        rates = [_backtest(fit)["log_error_per_log_distance"] for fit in fits]
        rate = min(r if r is not None else np.inf for r in rates)
        if best_start is None or rate < best_rate:
            best_rate, best_start = rate, latest
    return latest if best_start is None else best_start


def _inverse_square_weights(rates: dict[str, float | None]) -> dict[str, float]:
    """Weights proportional to 1 / rate^2 (equal where any rate is unknown). On the tuning
    seeds of benchmarks/forecast.py: median |error| 1.50%, 90% coverage 92%; 1 / rate gave
    1.46% but 96% coverage (intervals too wide), sharper choices larger errors (the single
    best form: 1.85%)."""
    if any(r is None for r in rates.values()):
        return {n: 1.0 / len(rates) for n in rates}
    inverse = {n: 1.0 / max(r, 1e-6) ** 2 for n, r in rates.items()}
    total = sum(inverse.values())
    return {n: v / total for n, v in inverse.items()}


def _split_count(n: int, weights: list[float]) -> list[int]:
    """n items split in proportion to weights (largest remainders), summing to n."""
    exact = np.asarray(weights, dtype=float) / np.sum(weights) * n
    counts = np.floor(exact).astype(int)
    for i in np.argsort(counts - exact)[: n - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def _forecast_entry(mix: dict, converters: dict) -> dict:
    """Estimates (value, interval, se) of each converted quantity of a forecast's point
    and replicates; for a target loss also whether and how often it is reached."""
    point, samples = np.asarray(mix["point"], dtype=float), np.asarray(mix["samples"])
    out = {
        key: robust.estimate(convert(point), convert(samples), mix["level"], mix["df"])
        for key, convert in converters.items()
    }
    if "tokens" in converters:
        out["reached"] = bool(np.isfinite(point))
        out["p_reach"] = float(np.mean(np.isfinite(samples))) if samples.size else None
    return out


def _forecast_info(mix: dict) -> dict:
    keys = ("form", "central", "weights", "warnings", "near_ngram_levels", "notes")
    return {k: mix[k] for k in keys}


def _build_form(name: str, run: Run, x_name: str, fit_x: np.ndarray, decay: float):
    family, floor = FORM_SPECS[name]
    if family is PowerForm:
        t_ref = float(np.exp(np.mean(np.log(fit_x)))) if fit_x.size else 1.0
        return PowerForm(t_ref, floor)
    log = run.lr_schedule_log()
    if log is None:
        raise UserError(
            f"{run.path} logs no learning rate, which the {name} form needs; "
            "pass --forms power,power-nofloor."
        )
    to_steps = _identity if x_name == "steps" else run.tokens_to_steps
    return ScheduleForm(LRSchedule(*log, decay=decay), to_steps, fit_x, floor)


def evaluation_scatter(x: np.ndarray, loss: np.ndarray) -> float | None:
    """How far single evaluations scatter around the smooth curve (SD of log loss), from the
    later half of the fitted points: each point's residual against the straight line (in
    log t, log loss) through its two neighbours, scaled for the neighbours' own scatter,
    and their median absolute value as a robust SD. None with fewer than 3 such points."""
    log_x, log_loss = np.log(x), np.log(loss)
    first = max(1, x.size // 2)
    if x.size - 1 - first < 3:
        return None
    i = np.arange(first, x.size - 1)
    share = (log_x[i + 1] - log_x[i]) / (log_x[i + 1] - log_x[i - 1])
    line = share * log_loss[i - 1] + (1 - share) * log_loss[i + 1]
    scaled = (log_loss[i] - line) / np.sqrt(1 + share**2 + (1 - share) ** 2)
    return float(1.4826 * np.median(np.abs(scaled)))


def evaluation_interval(
    forecast: dict, scatter: float | None, level: float, tail_error: float | None = None
) -> dict:
    """The interval one evaluation at t should fall in: the curve's interval widened on each
    side, in log loss and in quadrature, by the evaluations' own scatter around the curve, or
    by ``tail_error`` (the form's RMS log error on held-out points just past a fitted range,
    which holds that scatter and the form's misfit) where that is larger. A run's final loss
    is such an evaluation; the curve's interval alone is too narrow for it late in a run,
    where the fit pins the curve down better than the form describes what comes next
    (docs/analysis.md, "The interval of the final evaluation")."""
    value, low, high = forecast["value"], forecast["ci_low"], forecast["ci_high"]
    sd = max(scatter or 0.0, tail_error or 0.0)
    out = {"ci_low": low, "ci_high": high, "scatter": scatter, "tail_error": tail_error}
    if sd == 0.0 or value is None:
        return out
    spread = NormalDist().inv_cdf((1 + level) / 2) * sd
    for key, bound, sign in (("ci_low", low, -1), ("ci_high", high, 1)):
        if bound is not None:
            side = max(sign * np.log(bound / value), 0.0)  # 0: the bound lies across the value
            out[key] = float(value * np.exp(sign * np.hypot(side, spread)))
    return out


def _identity(x) -> np.ndarray:
    return np.asarray(x, dtype=float)


def _backtest(fit: CurveFit) -> dict:
    """Rolling-origin backtest: how fast the form's error grows with extrapolation
    distance, from the fitted range alone.

    The last tenth of the fitted points (at least 3) is the target; the form is refitted
    on the first m points for up to BACKTEST_ORIGINS origins m, spread evenly in log t
    between BACKTEST_RATIOS below the target (all possible origins when none is), and
    predicts the target. With e_m the mean log error over the target points and d_m their
    mean log distance past point m, sqrt(sum e_m^2 / sum d_m^2) is the drift rate that
    widens intervals past the fitted range and weighs forms in the forecast. Averaging
    over the target points keeps one noisy evaluation from deciding it.
    """
    n, p = fit.x.size, int(np.sum(fit.form.bounds[:, 1] > fit.form.bounds[:, 0]))
    n_target = max(3, int(np.ceil(0.1 * n)))
    counts = np.arange(max(p + 2, (n + 1) // 2), n - n_target + 1)
    measures_c = getattr(fit.form, "measures_c", None)
    if measures_c is not None and not fit.form.c_fixed:
        # a prefix too short to measure C would test another model than the one fitted
        counts = np.array([m for m in counts if measures_c(fit.x[:m])], dtype=int)
    if counts.size == 0:
        return {"origins": 0, "log_error_per_log_distance": None}
    log_x = np.log(fit.x)
    target_log_x = log_x[n - n_target :].mean()
    log_ratio = target_log_x - log_x[counts - 1]
    inside = (log_ratio >= np.log(BACKTEST_RATIOS[0])) & (log_ratio <= np.log(BACKTEST_RATIOS[1]))
    if inside.any():
        counts, log_ratio = counts[inside], log_ratio[inside]
    if counts.size > BACKTEST_ORIGINS:
        wanted = np.linspace(log_ratio.min(), log_ratio.max(), BACKTEST_ORIGINS)
        pick = np.unique([int(np.argmin(np.abs(log_ratio - w))) for w in wanted])
        counts, log_ratio = counts[pick], log_ratio[pick]
    log_pred = fit.predict_prefixes(counts, fit.x[n - n_target :])
    errors = (log_pred - np.log(fit.loss[n - n_target :])).mean(axis=1)
    return {
        "origins": int(counts.size),
        "log_error_per_log_distance": float(np.sqrt(np.sum(errors**2) / np.sum(log_ratio**2))),
        "log_errors": [round(float(e), 5) for e in errors],
        "log_distances": [round(float(d), 4) for d in log_ratio],
    }


def _tail_check(fits: dict[str, CurveFit], tail_fraction: float) -> dict:
    """Refit each form without the last points and score its predictions of them."""
    fit = next(iter(fits.values()))
    n_tail = max(2, int(round(tail_fraction * fit.x.size)))
    n_head = fit.x.size - n_tail
    need = max(fit.n_free for fit in fits.values()) + 2
    if n_head < need:
        return {"n_holdout": 0, "skipped": f"needs at least {need + n_tail} fitted points"}
    rmse = {}
    for name, fit in fits.items():
        log_pred = fit.predict_prefixes([n_head], fit.x[n_head:])
        rmse[name] = float(np.sqrt(np.mean((log_pred[0] - np.log(fit.loss[n_head:])) ** 2)))
    return {
        "n_holdout": n_tail,
        "holdout_from": float(fit.x[n_head]),
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
