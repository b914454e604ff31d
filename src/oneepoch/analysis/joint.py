"""The schedule-aware law fitted jointly over several runs of one setup (`fit --with`).

Tissue et al. (2024) fit L = L0 + A S1^(-alpha) - C S2 on one or two runs (a constant-LR
run and a short decay run) and predict other schedules. A constant-LR prefix cannot
measure C; a run of the same model and data whose LR decayed can. Here the four
parameters are shared by every run: each run contributes its evaluations (the target
within its --use-first part, the others whole) under its own LR areas S1, S2, and the
target's final loss is predicted under its planned schedule (config.toml). When no run's
fitted range shows enough decay (``ScheduleForm.measures_c``), C is held at 0 and the
forecast says that it leaves the decay out.
"""

from __future__ import annotations

import numpy as np

from oneepoch.analysis import robust
from oneepoch.analysis.curves import ScheduleForm, fit_curve
from oneepoch.analysis.runs import Run, eval_curve
from oneepoch.errors import UserError


def fit_joint(
    target: Run,
    others: list[Run],
    *,
    x: str = "tokens",
    use_first: float | None = None,
    min_steps: dict | None = None,
    predict_at: float | None = None,
    n_boot: int = 200,
    level: float = robust.DEFAULT_LEVEL,
    seed: int = 0,
    decay: float = 0.999,
) -> dict:
    """The joint fit and the target's forecast at ``predict_at`` (default: its planned
    final step, in ``x`` units), as a JSON-ready dict. ``min_steps`` maps each run's path
    to the step its fit starts after (default: that run's own default start)."""
    from oneepoch.analysis.runfit import evaluation_interval, evaluation_scatter, fit_run

    runs = [target, *others]
    parts = []
    for i, run in enumerate(runs):
        # each run's own fitted range, by the single-run rules (start after its warm-up)
        single = fit_run(
            run,
            x=x,
            forms=("schedule",),
            use_first=use_first if i == 0 else None,
            min_step=(min_steps or {}).get(str(run.path)),
            n_boot=0,
            decay=decay,
        )
        form = single.fits["schedule"].form
        parts.append((run, form, single.fits["schedule"].x, single.fits["schedule"].loss))
    target_form = parts[0][1]
    measured = [form.measures_c(xs) for _, form, xs, _ in parts]
    joint = _JointForm(target_form, parts, c_free=any(measured))
    index = np.arange(sum(len(xs) for _, _, xs, _ in parts), dtype=float)
    loss = np.concatenate([ls for *_, ls in parts])
    fit = fit_curve(joint, index, loss, n_boot=n_boot, level=level, rng=np.random.default_rng(seed))

    if predict_at is None:
        final_step = target.planned_final_steps
        predict_at = final_step if x == "steps" else float(target.steps_to_tokens(final_step))
    model = target_form.model(np.array([predict_at]))
    model.bounds = joint.bounds
    point = float(np.exp(robust.log_pred(model, fit.theta[None])[0, 0]))
    samples = np.exp(robust.log_pred(model, fit.boot)[:, 0]) if fit.boot.size else np.empty(0)
    notes = []
    if not any(measured):
        notes.append(
            "the forecast leaves out the loss drop of the LR decay: no run's fitted range "
            "shows enough decay to measure the annealing term C, so it is held at 0"
        )
    estimate = robust.estimate(point, samples, level, fit.df)
    observed = eval_curve(target, x)
    at_end = observed["x"].size and abs(observed["x"][-1] / predict_at - 1) < 1e-9
    return {
        "runs": [str(run.path) for run in runs],
        "n_points": {str(run.path): int(len(xs)) for run, _, xs, _ in parts},
        "c_measured_by": [str(run.path) for (run, *_), m in zip(parts, measured) if m],
        "formula": target_form.formula,
        "params": fit.params(),
        "goodness": fit.goodness(),
        "forecast": {
            "x": float(predict_at),
            **estimate,
            "evaluation": evaluation_interval(estimate, evaluation_scatter(*parts[0][2:]), level),
            "observed_loss": float(observed["loss"][-1]) if at_end else None,
        },
        "notes": notes,
    }


class _JointForm:
    """The schedule form over several runs' evaluations, indexed 0..n-1 in run order, with
    one set of parameters (the target's reference scales, so theta means the same for all)."""

    def __init__(self, target: ScheduleForm, parts: list, c_free: bool):
        if not target.floor:
            raise UserError("the joint fit uses the schedule form with its floor.")
        self.target, self.parts = target, parts
        self.name, self.formula = "schedule-joint", target.formula
        self.param_names = target.param_names
        self.bounds = target.bounds.copy()
        self.bounds[3] = (0.0, 1e3) if c_free else (0.0, 0.0)
        for _, form, _, _ in parts:
            form.s1_ref, form.s2_ref = target.s1_ref, target.s2_ref

    def model(self, index) -> _JointModel:
        models = []
        for _, form, xs, _ in self.parts:
            m = form.model(xs)
            m.bounds = self.bounds
            models.append(m)
        return _JointModel(models, np.asarray(index, dtype=int), self.bounds)

    def starts(self, index, loss) -> np.ndarray:
        _, form, xs, ls = self.parts[0]
        base = form.starts(xs, ls)
        if self.bounds[3, 1] == 0:
            return base[base[:, 3] == 0]
        drops = [0.0, 0.02 * loss.min(), 0.1 * loss.min()]
        return np.unique([[*row[:3], c] for row in base for c in drops], axis=0)

    def params(self, theta) -> dict[str, np.ndarray]:
        return self.target.params(theta)


class _JointModel:
    """Concatenated predictions of the runs' schedule models, at the given indices."""

    def __init__(self, models: list, index: np.ndarray, bounds: np.ndarray):
        self.models, self.index, self.bounds = models, index, bounds

    def log_pred_jac(self, theta):
        preds, jacs = zip(*(m.log_pred_jac(theta) for m in self.models))
        pred, jac = np.concatenate(preds, axis=1), np.concatenate(jacs, axis=1)
        return pred[:, self.index], jac[:, self.index]
