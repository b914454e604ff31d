"""Reading run directories (docs/formats.md): metrics.jsonl, run.json, config.toml.

Only the files are read; nothing from the trainer is imported, so analysis works on runs
made elsewhere and without torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from oneepoch.errors import UserError
from oneepoch.rundir import RunDir

# The ``kind`` of the live forecast's records in metrics.jsonl (oneepoch.live_forecast).
FORECAST_KIND = "forecast"
# Columns kept from metrics.jsonl; absent or non-numeric values become NaN.
COLUMNS = ("step", "tokens", "unique_tokens", "epoch", "lr", "train_loss", "wall_s", "flops")


@dataclass
class Run:
    path: Path
    lines: dict[str, np.ndarray]  # every logged step (train and eval lines), sorted by step
    evals: dict[str, np.ndarray]  # eval lines only (adds "val_loss"), sorted by step
    info: dict = field(default_factory=dict)  # run.json, {} when absent
    config: dict = field(default_factory=dict)  # config.toml, {} when absent
    dropped_evals: int = 0  # evaluations left out: val_loss NaN, null, infinite or <= 0

    @property
    def name(self) -> str:
        return self.path.name or str(self.path)

    @property
    def final_tokens(self) -> float:
        return float(np.nanmax(self.lines["tokens"]))

    @property
    def warmup_steps(self) -> int:
        """The configured warm-up; when the config leaves it to the trainer (a negative
        value) or is absent, the first logged step at the peak learning rate."""
        configured = _number(self.config.get("optim", {}).get("warmup_steps"))
        if configured is not None and configured >= 0:
            return int(configured)
        log = self.lr_log()
        if log is None:
            return 0
        steps, lr = log
        return int(steps[np.argmax(lr >= lr.max() * (1 - 1e-6))])

    @property
    def flops_per_token(self) -> float | None:
        """From run.json, else from the logged flops/tokens; None when neither is there."""
        value = self.info.get("flops_per_token")
        if isinstance(value, (int, float)) and value > 0:
            return float(value)
        ok = np.isfinite(self.lines["flops"]) & (self.lines["tokens"] > 0)
        if ok.any():
            return float(self.lines["flops"][ok][-1] / self.lines["tokens"][ok][-1])
        return None

    @property
    def ngram_losses(self) -> dict[str, float]:
        """The data's unigram and bigram losses (data/ngram.py) as the trainer recorded them
        in run.json, {"unigram": ..., "bigram": ...}; empty for runs without them (older
        versions, other tools)."""
        data = self.info.get("data")
        data = data if isinstance(data, dict) else {}
        out = {}
        for name in ("unigram", "bigram"):
            value = _number(data.get(f"{name}_loss"))
            if value is not None and math.isfinite(value) and value > 0:
                out[name] = value
        return out

    @property
    def epochs(self) -> float:
        """How many times the run goes over its data: config.toml's data.epochs, else the
        last logged epoch count, else 1."""
        data = self.config.get("data")
        planned = _number(data.get("epochs")) if isinstance(data, dict) else None
        if planned is not None and planned > 0:
            return planned
        logged = self.lines["epoch"][np.isfinite(self.lines["epoch"])]
        return float(max(logged[-1], 1.0)) if logged.size else 1.0

    def steps_to_tokens(self, steps) -> np.ndarray:
        return _interp_extrapolate(steps, *self._step_token_table())

    def tokens_to_steps(self, tokens) -> np.ndarray:
        s, t = self._step_token_table()
        return _interp_extrapolate(tokens, t, s)

    def _step_token_table(self) -> tuple[np.ndarray, np.ndarray]:
        ok = np.isfinite(self.lines["tokens"])
        steps = np.concatenate([[0.0], self.lines["step"][ok]])
        tokens = np.concatenate([[0.0], self.lines["tokens"][ok]])
        return steps, tokens

    def lr_log(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(steps, lr) of every line that logged a positive LR, or None."""
        ok = np.isfinite(self.lines["lr"]) & (self.lines["lr"] >= 0)
        if not ok.any() or np.nanmax(self.lines["lr"][ok]) <= 0:
            return None
        return self.lines["step"][ok], self.lines["lr"][ok]

    def planned_lr(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(steps, lr) for every step of the run's planned schedule, from config.toml
        (the trainer's own schedule function); None without a step budget to plan by."""
        from oneepoch.config import RunConfig, total_steps
        from oneepoch.schedule import lr_at

        if not self.config:
            return None
        try:
            cfg = RunConfig.from_dict(self.config, origin=str(RunDir(self.path).config))
        except (UserError, TypeError, ValueError):
            return None
        total = total_steps(cfg)
        if not total:
            return None
        steps = np.arange(1, total + 1, dtype=float)
        # the LR logged at step s is the one the update to step s used: lr_at(s - 1)
        lr = np.array([lr_at(cfg.optim, int(s) - 1, total) for s in steps])
        return steps, lr

    def lr_schedule_log(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The logged LR, continued by the planned schedule past the last logged step (a
        run still training, or paused); None without a logged LR."""
        log = self.lr_log()
        if log is None:
            return None
        plan = self.planned_lr()
        if plan is None or plan[0][-1] <= log[0][-1]:
            return log
        later = plan[0] > log[0][-1]
        return np.concatenate([log[0], plan[0][later]]), np.concatenate([log[1], plan[1][later]])

    @property
    def planned_final_steps(self) -> float:
        """The planned last step (config.toml), else the last logged one."""
        plan = self.planned_lr()
        return float(plan[0][-1]) if plan is not None else float(np.nanmax(self.lines["step"]))

    def wall_rate(self, max_tokens: float | None = None) -> tuple[float, float] | None:
        """(offset_s, tokens_per_s) from a least-squares line wall_s = offset + tokens / rate.

        Only lines with tokens <= max_tokens are used, so an extrapolation from the first
        part of a run does not peek at its later throughput. None without wall_s.
        """
        t, w = self.lines["tokens"], self.lines["wall_s"]
        ok = np.isfinite(t) & np.isfinite(w)
        if max_tokens is not None:
            ok &= t <= max_tokens
        if ok.sum() < 2 or np.ptp(t[ok]) == 0:
            return None
        slope, offset = np.polyfit(t[ok], w[ok], 1)
        if slope <= 0:
            return None
        return float(offset), float(1.0 / slope)


def load_run(path: str | Path, until_step: float | None = None) -> Run:
    """The run in ``path``; with ``until_step``, as it stood at that step (its lines up to
    it): what the live forecast of `oneepoch train` fitted there."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(
            f"run directory {path} does not exist; pass a directory written by `oneepoch train`."
        )
    files = RunDir(path)
    metrics = files.metrics
    if not metrics.is_file():
        raise UserError(f"{metrics} is missing; pass a run directory written by `oneepoch train`.")
    records = metrics_lines(_read_jsonl(metrics))
    if until_step is not None:
        records = [r for r in records if r["step"] <= until_step]
    if not records:
        raise UserError(f"{metrics} has no metrics lines; train the run before analysing it.")

    # A resumed run appends: when a step appears twice, the later line is the one that holds.
    lines = _columns(_last_per_step(records), COLUMNS)
    evaluations = _last_per_step([r for r in records if "val_loss" in r])
    losses = np.array([_number(r["val_loss"], math.nan) for r in evaluations], dtype=float)
    if evaluations and np.isnan(losses).all():
        raise UserError(
            f"every validation loss in {metrics} is NaN or missing ({len(evaluations)} "
            "evaluations): the run diverged; train it again with a lower learning rate."
        )
    # A cross-entropy is finite and positive: anything else is a diverged step or damage.
    good = np.isfinite(losses) & (losses > 0)
    if evaluations and not good.any():
        raise UserError(
            f"no validation loss in {metrics} is a positive finite number (of "
            f"{len(evaluations)} evaluations, {int(np.isnan(losses).sum())} NaN or missing, "
            f"{int(np.isinf(losses).sum())} infinite, {int((losses <= 0).sum())} zero or "
            "negative), so there is no curve to fit; the file is damaged or was not written by "
            "`oneepoch train`."
        )
    evals = _columns([r for r, ok in zip(evaluations, good) if ok], COLUMNS + ("val_loss",))
    if not np.isfinite(lines["tokens"]).any():
        raise UserError(f"{metrics} has no `tokens` values; it does not follow docs/formats.md.")
    info = _read_json(files.info)
    config = _read_toml(files.config)
    return Run(path, lines, evals, info, config, dropped_evals=int((~good).sum()))


def eval_curve(run: Run, x: str = "tokens") -> dict[str, np.ndarray]:
    """Evaluations with x > 0, sorted by step: keys x, steps, tokens, loss."""
    if x not in ("tokens", "steps"):
        raise UserError(f"--x must be tokens or steps, not {x!r}.")
    steps, tokens = run.evals["step"], run.evals["tokens"]
    xs = steps if x == "steps" else tokens
    ok = np.isfinite(xs) & (xs > 0)
    return {
        "x": xs[ok],
        "steps": steps[ok],
        "tokens": tokens[ok],
        "loss": run.evals["val_loss"][ok],
    }


def _read_jsonl(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8", errors="replace")
    raw = text.splitlines()
    records = []
    for number, line in enumerate(raw, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            if number == len(raw) and not text.endswith("\n"):
                continue  # the trainer is mid-write; the last line is not complete yet
            raise UserError(f"{path} line {number} is not valid JSON; fix or remove it.") from None
        if not isinstance(obj, dict) or _number(obj.get("step")) is None:
            raise UserError(f"{path} line {number} has no numeric `step`; fix or remove it.")
        records.append(obj)
    return records


def metrics_lines(records: list[dict]) -> list[dict]:
    """The training and evaluation lines, without the live forecast's ``forecast`` records
    (which name the step they were made at, but are not measurements of it)."""
    return [r for r in records if r.get("kind") != FORECAST_KIND]


def _last_per_step(records: list[dict]) -> list[dict]:
    by_step = {}
    for r in records:
        by_step[float(r["step"])] = r
    return [by_step[s] for s in sorted(by_step)]


def _columns(records: list[dict], names) -> dict[str, np.ndarray]:
    return {
        name: np.array([_number(r.get(name), math.nan) for r in records], dtype=float)
        for name in names
    }


def _number(value, default=None):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    return float(value)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise UserError(f"{path} is not valid JSON; fix or remove it.") from None
    return obj if isinstance(obj, dict) else {}


def _read_toml(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError:
        raise UserError(f"{path} is not valid TOML; fix or remove it.") from None


def _interp_extrapolate(x, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """Linear interpolation, continued past the last point with the last segment's slope."""
    x = np.asarray(x, dtype=float)
    y = np.interp(x, xp, fp)
    if xp.size >= 2 and xp[-1] > xp[-2]:
        slope = (fp[-1] - fp[-2]) / (xp[-1] - xp[-2])
        y = np.where(x > xp[-1], fp[-1] + slope * (x - xp[-1]), y)
    return y
