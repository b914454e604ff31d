"""TensorBoard event files from a run directory: `oneepoch tensorboard RUN... --logdir DIR`.

Scalars, one point per metrics.jsonl line, at its ``step``:

    loss/train      train_loss
    loss/val        val_loss (evaluation lines)
    lr              lr
    tokens_per_s    tokens / wall_s since the previous line (training clock, evaluation excluded)
    mfu             tokens_per_s x run.json's flops_per_token / (peak_flops.value x .devices)

and from the live forecast's ``forecast`` records (oneepoch.live_forecast), at the step each
was made:

    forecast/final_loss        the forecast of the final validation loss
    forecast/final_loss_low    its 90% interval
    forecast/final_loss_high
    forecast/target_step       with --target-loss: the step forecast to reach it

Each event's wall time is the line's ``wall_s``, so TensorBoard's "relative" axis is the
training wall-clock the paper compares runs by. Written with tensorboard's own event writer
(no torch); nothing here imports torch. ``EventLog`` is what a trainer would call live, one
``write(line)`` per metrics line (``live_log`` opens it for `oneepoch train --tensorboard
DIR`); ``write_events`` converts a finished (or running) run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from oneepoch.analysis.runs import FORECAST_KIND
from oneepoch.errors import UserError
from oneepoch.rundir import RunDir

SUFFIX = ".oneepoch"  # marks the event files written here, so a new conversion replaces them


def require_tensorboard():
    try:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
    except ImportError:
        raise UserError(
            "writing TensorBoard event files needs the tensorboard package; "
            "`pip install tensorboard` (or oneepoch[tensorboard]) and run this again."
        ) from None
    return event_pb2, summary_pb2, EventFileWriter


class EventLog:
    """Appends metrics lines to a TensorBoard event file in ``log_dir``.

    ``flops_per_token`` and ``peak_flops`` (run.json's fields) enable the ``mfu`` scalar.
    ``purge_step``: a resumed run's first new step; TensorBoard then drops the points at and
    after it that earlier files hold (the lines --resume truncated away). ``start`` is the
    (tokens, wall_s) the run resumes from, so its first tokens/s point is right."""

    def __init__(
        self,
        log_dir: str | Path,
        flops_per_token: float | None = None,
        peak_flops: dict | None = None,
        purge_step: int | None = None,
        start: tuple[float, float] = (0.0, 0.0),
    ):
        self._event, self._summary, writer = require_tensorboard()
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        self.writer = writer(str(log_dir), filename_suffix=SUFFIX)
        peak = peak_flops or {}
        self.peak_total = (peak.get("value") or 0) * (peak.get("devices") or 1)
        self.flops_per_token = flops_per_token or 0
        self.prev_tokens, self.prev_wall = float(start[0]), float(start[1])
        if purge_step is not None:
            self._add(
                self._event.Event(
                    step=purge_step,
                    session_log=self._event.SessionLog(status=self._event.SessionLog.START),
                )
            )

    def _add(self, event) -> None:
        self.writer.add_event(event)

    def scalars(self, line: dict) -> dict[str, float]:
        """The scalars of one metrics line (advances the tokens/s reference point)."""
        if line.get("kind") == FORECAST_KIND:
            return forecast_scalars(line)
        out = {}
        for tag, key in (("loss/train", "train_loss"), ("loss/val", "val_loss"), ("lr", "lr")):
            if _is_number(line.get(key)):
                out[tag] = float(line[key])
        tokens, wall = line.get("tokens"), line.get("wall_s")
        if _is_number(tokens) and _is_number(wall):
            dt = wall - self.prev_wall
            if dt > 0 and tokens > self.prev_tokens:
                out["tokens_per_s"] = (tokens - self.prev_tokens) / dt
                if self.peak_total > 0 and self.flops_per_token > 0:
                    achieved = out["tokens_per_s"] * self.flops_per_token
                    out["mfu"] = achieved / self.peak_total
            self.prev_tokens, self.prev_wall = float(tokens), float(wall)
        return out

    def write(self, line: dict) -> dict[str, float]:
        """Write one metrics line's scalars at its step; returns them."""
        values = self.scalars(line)
        if values:
            summary = self._summary.Summary(
                value=[
                    self._summary.Summary.Value(tag=t, simple_value=v) for t, v in values.items()
                ]
            )
            wall = line.get("wall_s")
            self._add(
                self._event.Event(
                    wall_time=float(wall) if _is_number(wall) else 0.0,
                    step=int(line["step"]),
                    summary=summary,
                )
            )
        return values

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def forecast_scalars(record: dict) -> dict[str, float]:
    """The scalars of a live forecast record."""
    interval = record.get("interval") or [None, None]
    target = record.get("target") or {}
    values = {
        "forecast/final_loss": record.get("forecast"),
        "forecast/final_loss_low": interval[0],
        "forecast/final_loss_high": interval[1],
        "forecast/target_step": (target.get("steps") or [None])[0],
    }
    return {k: float(v) for k, v in values.items() if _is_number(v) and math.isfinite(v)}


def live_log(
    run_dir: str | Path,
    log_root: str | Path,
    flops_per_token: float | None,
    peak_flops: dict | None,
    resumed_step: int = 0,
) -> EventLog:
    """The trainer's EventLog (`train --tensorboard DIR`) in LOG_ROOT/<run folder name>, where
    `oneepoch tensorboard RUN --logdir LOG_ROOT` writes too. The points after the step a run
    resumes from, which its metrics.jsonl no longer holds, are purged, and tokens/s goes on
    from metrics.jsonl's last line, so the curves are those a conversion would draw."""
    run = Path(run_dir)
    log_dir = check_log_dir(log_root, run)
    last = _last_line(RunDir(run).metrics)
    start = (last.get("tokens", 0.0), last.get("wall_s", 0.0))
    return EventLog(log_dir, flops_per_token, peak_flops, resumed_step + 1, start)


def check_log_dir(log_root: str | Path, run_dir: str | Path) -> Path:
    """LOG_ROOT/<run folder name>, refused (before anything is written) unless both are
    folders or can be made."""
    log_dir = Path(log_root) / Path(run_dir).resolve().name
    for folder in (Path(log_root), log_dir):
        if folder.exists() and not folder.is_dir():
            raise UserError(f"{folder} is a file; give a folder for the TensorBoard logs.")
    for parent in Path(log_root).parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(
                    f"{parent} is a file, so {log_root} cannot be made; give a folder for the "
                    "TensorBoard logs."
                )
            break
    return log_dir


def _last_line(path: Path) -> dict:
    """The last metrics line of ``path`` ({} when there is none)."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError:
        return {}
    for raw in reversed(lines):
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict) and _is_number(line.get("tokens")):
            return line
    return {}


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def write_events(run_dir: str | Path, log_dir: str | Path) -> dict:
    """Convert RUN's metrics.jsonl into a TensorBoard event file in ``log_dir``.

    Replaces the event files an earlier conversion wrote there (and only those). Returns
    {"log_dir", "file", "lines", "scalars": {tag: points}}."""
    from oneepoch.analysis.runs import _last_per_step, _read_jsonl, metrics_lines

    run, log_dir = RunDir(run_dir), Path(log_dir)
    metrics = run.metrics
    if not metrics.is_file():
        raise UserError(f"{metrics} is missing; pass a run directory written by `oneepoch train`.")
    records = _read_jsonl(metrics)
    # a resumed run's later line holds; forecasts are kept apart, a step can have both
    lines = _last_per_step(metrics_lines(records))
    forecasts = _last_per_step([r for r in records if r.get("kind") == FORECAST_KIND])
    if not lines:
        raise UserError(f"{metrics} has no metrics lines; train the run before converting it.")
    info = {}
    if run.info.is_file():
        try:
            info = run.read_info()
        except ValueError:
            raise UserError(f"{run.info} is not valid JSON; fix or remove it.") from None
    if log_dir.exists() and not log_dir.is_dir():
        raise UserError(f"{log_dir} is a file; give a folder for the TensorBoard logs.")
    pattern = f"events.out.tfevents.*{SUFFIX}"
    old = set(log_dir.glob(pattern)) if log_dir.is_dir() else set()
    log = EventLog(log_dir, info.get("flops_per_token"), info.get("peak_flops"))
    (new,) = set(log_dir.glob(pattern)) - old  # the writer names its file uniquely
    counts: dict[str, int] = {}
    try:
        for line in lines + forecasts:
            for tag in log.write(line):
                counts[tag] = counts.get(tag, 0) + 1
        log.close()
    except BaseException:
        log.close()
        new.unlink(missing_ok=True)  # the earlier conversion stays as it was
        raise
    for f in old:
        f.unlink()  # superseded by the new file
    written = len(lines) + len(forecasts)
    return {"log_dir": str(log_dir), "file": str(new), "lines": written, "scalars": counts}
