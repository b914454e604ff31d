"""The forecast while a run trains: `oneepoch train` re-fits the validation curve at
evaluations and forecasts the final loss, with its 90% interval, and with --target-loss when
the run will reach that loss, or that it will not by the end of its budget.

Each re-fit is `oneepoch fit`'s own code on the run directory as it stood at that step
(``forecast_record``: ``load_run(until_step=...)``, ``fit_run``, ``predict_at`` the planned
final step, ``time_to_target``), so `oneepoch fit` on the same points gives the same numbers.

Re-fits run in a worker process at the lowest CPU priority, so the training loop does not
wait for them: a finished re-fit is written (a ``forecast`` line of metrics.jsonl, a
TensorBoard point, the progress line) at the next metrics line. The loop waits only where a
result must be in the file by then: before a checkpoint (a resumed run then holds every
forecast an uninterrupted one does), at the end, and with --stop-if-unreachable at the
evaluation that decides whether to stop. Which evaluations re-fit is a function of the step
alone (``refits_at``), never of how long a re-fit took, so the records do not depend on the
machine's load. Torch-free.
"""

from __future__ import annotations

import json
import math
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from oneepoch.analysis.runs import FORECAST_KIND
from oneepoch.cliflags import jsonable
from oneepoch.progress import format_clock
from oneepoch.rundir import RunDir

# Where a live forecast starts: at this share of the planned run and with at least this
# many evaluations fitted. benchmarks/forecast.py --use-first decided them: from 20% its
# 90% interval covered 81% of the tuning curves, from 30% 92%; with 5 points as often as
# with more (docs/analysis.md, "When the live forecast starts").
MIN_SHARE = 0.3
MIN_POINTS = 5
# Re-fit at the first evaluation in each such share of the run: every evaluation of the
# default cadence (about 20 a run), at most 1 / REFIT_SHARE re-fits however often a run
# evaluates.
REFIT_SHARE = 0.05
N_BOOT = 200  # as `oneepoch fit`, so that both give the same interval


@dataclass
class ForecastPlan:
    """What the trainer tells the live forecast once."""

    run_dir: Path
    final_step: int | None  # the planned last step; None: a wall-clock budget
    time_s: float = 0.0  # the wall-clock budget, when there is one
    target_loss: float | None = None
    stop_if_unreachable: bool = False
    companion: str | None = None  # a run of the same setup whose LR decayed (`fit --with`)


def refits_at(step: int, final_step: int, evaluates: Callable[[int], bool]) -> bool:
    """Whether the evaluation at ``step`` re-fits: from MIN_SHARE of the run on, the first
    evaluation in each REFIT_SHARE of it, never at the last step (its loss is observed)."""
    if step >= final_step or step < MIN_SHARE * final_step:
        return False
    width = max(1, round(REFIT_SHARE * final_step))
    bucket_start = max(step // width * width, math.ceil(MIN_SHARE * final_step))
    return not any(evaluates(s) for s in range(bucket_start, step))


def forecast_record(
    run_dir: str | Path,
    step: int,
    final_step: float,
    *,
    target_loss: float | None = None,
    companion: str | None = None,
    n_boot: int = N_BOOT,
) -> dict | None:
    """The ``forecast`` record of the run in ``run_dir`` as it stood at ``step``: its final
    loss at ``final_step`` and, with ``target_loss``, when it gets there. None while the
    curve is too short (fewer than MIN_POINTS evaluations fitted, or too few for any form)."""
    from oneepoch.analysis.lr_schedule import LRSchedule
    from oneepoch.analysis.runfit import fit_run
    from oneepoch.analysis.runs import load_run
    from oneepoch.errors import UserError

    run = load_run(run_dir, until_step=step)
    try:
        rf = fit_run(run, n_boot=n_boot)
    except UserError:
        return None
    if rf.settings["n_fit_points"] < MIN_POINTS:
        return None
    at_tokens = float(run.steps_to_tokens(final_step))
    forecast = rf.predict_at(at_tokens)["forecast"]
    record = {
        "kind": FORECAST_KIND,
        "step": int(step),
        "at_step": int(round(final_step)),
        "at_tokens": at_tokens,
        "forecast": forecast["value"],
        **_intervals(forecast),
        "form": forecast["form"],
        "weights": forecast["weights"],
        "warnings": forecast["warnings"],
        "near_ngram_levels": forecast["near_ngram_levels"],
        "notes": forecast["notes"],
        "n_points": rf.settings["n_fit_points"],
        "wall_s": float(run.lines["wall_s"][-1]),  # the training clock at ``step``
    }
    schedule = run.lr_schedule_log()
    if companion and schedule is not None and not LRSchedule(*schedule).constant:
        _schedule_aware(record, rf, companion, at_tokens, n_boot)
    if target_loss:
        record["target"] = _target(rf, target_loss, record["interval"])
    return record


def _schedule_aware(record: dict, rf, companion: str, at_tokens: float, n_boot: int) -> None:
    """Under a planned LR decay, the forecast of the schedule-aware law fitted jointly with
    a run of the same setup whose LR decayed (`oneepoch fit --with`), which measures the
    annealing term the run's own prefix cannot."""
    from oneepoch.analysis.joint import fit_joint
    from oneepoch.analysis.runs import load_run
    from oneepoch.errors import UserError

    try:
        joint = fit_joint(rf.run, [load_run(companion)], predict_at=at_tokens, n_boot=n_boot)
    except UserError as exc:  # e.g. too few points yet for the four-parameter law
        record["notes"] = [*record["notes"], f"the joint fit with {companion} failed: {exc}"]
        return
    fc = joint["forecast"]
    record.update(
        forecast=fc["value"],
        **_intervals(fc),
        form="schedule (joint with the companion run)",
        weights={"schedule": 1.0},
        notes=list(joint["notes"]),
    )


def _intervals(forecast: dict) -> dict:
    """A record's intervals: ``interval``, the final evaluation's (the final loss is one
    evaluation: the curve's interval widened by the evaluations' scatter), and the curve's."""
    evaluation = forecast["evaluation"]
    return {
        "interval": [evaluation["ci_low"], evaluation["ci_high"]],
        "curve_interval": [forecast["ci_low"], forecast["ci_high"]],
    }


def _target(rf, target: float, final: list) -> dict:
    """When the run reaches ``target`` (steps and training seconds, with intervals), and
    whether ``final``, the interval of the forecast final loss, says it will by the end:
    ``unlikely`` when even its low end stays above the target, ``likely`` when its high end
    is below, else ``uncertain``."""
    out = rf.time_to_target(target)
    observed = out["observed"]
    if observed is not None:
        return {"loss": target, "reached_at_step": observed["steps"], "by_end": "reached"}
    fc = out["forecast"]
    steps, wall = fc["steps"], fc.get("wall_s")
    final_low, final_high = final
    if final_low is not None and final_low > target:
        by_end = "unlikely"
    elif final_high is not None and final_high <= target:
        by_end = "likely"
    else:
        by_end = "uncertain"
    return {
        "loss": target,
        "by_end": by_end,
        "steps": [steps["value"], steps["ci_low"], steps["ci_high"]],
        "wall_s": None if wall is None else [wall["value"], wall["ci_low"], wall["ci_high"]],
        "p_reach": fc["p_reach"],
    }


class LiveForecast:
    """The trainer's side: which evaluations re-fit, the worker, and what gets shown.

    ``write`` is the trainer's metrics writer (metrics.jsonl and TensorBoard); ``say`` prints
    one line to the user (the unreachable-target warning)."""

    def __init__(
        self, plan: ForecastPlan, write: Callable[[dict], None], say: Callable, enabled=True
    ):
        self.plan, self.write, self.say, self.enabled = plan, write, say, enabled
        self.latest: dict | None = None
        self.stop = False  # --stop-if-unreachable: the forecast says stop
        self._worker: _Worker | None = None
        self._pending: list[int] = []
        self._last_bucket = -1
        self._warned = enabled and _already_warned(RunDir(plan.run_dir).metrics)

    def after_line(self, step: int, evaluated: bool, evaluates, elapsed_s: float) -> None:
        """After a metrics line is written: queue a re-fit when the evaluation at ``step``
        is due one (``evaluates``: the cadence), and write the re-fits that have finished."""
        if not self.enabled:
            return
        if evaluated:
            self._evaluated(step, evaluates, elapsed_s)
        self.poll()

    def _evaluated(self, step: int, evaluates: Callable[[int], bool], elapsed_s: float) -> None:
        final = self._final_step(step, elapsed_s)
        if final is None:
            return
        if self.plan.final_step is not None:
            due = refits_at(step, final, evaluates)
        else:  # a wall-clock budget: by the share of time, which the steps cannot tell
            share = elapsed_s / self.plan.time_s
            bucket = int(share / REFIT_SHARE)
            due = share >= MIN_SHARE and share < 1 and bucket > self._last_bucket
            self._last_bucket = max(self._last_bucket, bucket) if due else self._last_bucket
        if not due:
            return
        if self._worker is None:
            try:
                self._worker = _Worker()
            except OSError as exc:
                return self._give_up(f"its worker process did not start: {exc}")
        self._worker.submit(
            {
                "run_dir": str(self.plan.run_dir),
                "step": step,
                "final_step": final,
                "target_loss": self.plan.target_loss,
                "companion": self.plan.companion,
            }
        )
        self._pending.append(step)
        if self.plan.stop_if_unreachable:
            self.drain()  # the decision to stop must not depend on how long a fit took

    def _final_step(self, step: int, elapsed_s: float) -> float | None:
        if self.plan.final_step is not None:
            return float(self.plan.final_step)
        if elapsed_s <= 0 or not self.plan.time_s:
            return None
        return step * self.plan.time_s / elapsed_s  # at the throughput so far

    def poll(self) -> None:
        """Write the re-fits that have finished (never waits)."""
        while self._pending and (answer := self._worker.result(block=False)) is not None:
            self._take(answer)

    def drain(self) -> None:
        """Wait for every queued re-fit and write it (before a checkpoint and at the end)."""
        while self._pending:
            self._take(self._worker.result(block=True))

    def _take(self, answer: dict) -> None:
        self._pending.pop(0)
        if "error" in answer:
            return self._give_up(answer["error"])
        record = answer.get("record")
        if record is None:
            return
        self.write(record)
        self.latest = record
        target = record.get("target") or {}
        if target.get("by_end") == "unlikely":
            if not self._warned:
                self._warned = True
                self.say(unreachable_warning(record, self.plan.stop_if_unreachable))
            self.stop = self.plan.stop_if_unreachable

    def _give_up(self, why: str) -> None:
        """Said once; training goes on without the live forecast."""
        self.say(f"warning: the live forecast stopped ({why}); training goes on without it.")
        self.enabled, self._pending = False, []
        self.close(wait=False)

    def progress_note(self, wall_s: float) -> str:
        """The forecast for the progress line: 'final 4.73 [4.61, 4.86]' and the target's ETA."""
        return progress_note(self.latest, wall_s) if self.enabled else ""

    def close(self, wait: bool = True) -> None:
        """End the worker: after its queued re-fits (``wait``), or at once (a failed run)."""
        if self._worker is not None:
            self._worker.close(wait)
            self._worker = None


def progress_note(record: dict | None, wall_s: float) -> str:
    if not record or record.get("forecast") is None:
        return ""
    low, high = record["interval"]
    text = f"final {record['forecast']:.3f}"
    if low is not None and high is not None:
        text += f" [{low:.3f}, {high:.3f}]"
    if record.get("near_ngram_levels"):  # the warning in the record says why
        text += f" (unsure: near the {record['near_ngram_levels'][0]} plateau)"
    target = record.get("target")
    if not target:
        return text
    loss = target["loss"]
    if target["by_end"] == "reached":
        return f"{text}, {loss:g} reached at step {target['reached_at_step']:,.0f}"
    if target["by_end"] == "unlikely":
        return f"{text}, {loss:g} not by step {record['at_step']:,}"
    step = target["steps"][0]
    if step is None or not math.isfinite(step) or step > record["at_step"]:
        return f"{text}, {loss:g} maybe not by step {record['at_step']:,}"
    eta = ""
    wall = target.get("wall_s")
    if wall and wall[0] is not None:
        eta = f" (in {format_clock(max(wall[0] - wall_s, 0.0))})"
    return f"{text}, {loss:g} at step ~{step:,.0f}{eta}"


def unreachable_warning(record: dict, stopping: bool) -> str:
    low, high = record["interval"]
    loss = record["target"]["loss"]
    then = (
        "stopping (--stop-if-unreachable)"
        if stopping
        else "training goes on (--stop-if-unreachable would stop it)"
    )
    return (
        f"warning: at step {record['step']:,} the final loss is forecast at "
        f"{record['forecast']:.3f} [{low:.3f}, {high:.3f}], so --target-loss {loss:g} is "
        f"unlikely to be reached by step {record['at_step']:,}; {then}."
    )


def _already_warned(metrics: Path) -> bool:
    """Whether a forecast already in metrics.jsonl (a resumed run's) found the target
    unreachable: the warning was said then."""
    try:
        text = metrics.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    for raw in text.splitlines():
        if '"forecast"' not in raw:
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        target = line.get("target") if isinstance(line, dict) else None
        if line.get("kind") == FORECAST_KIND and isinstance(target, dict):
            if target.get("by_end") == "unlikely":
                return True
    return False


class _Worker:
    """A child process (``python -m oneepoch.live_forecast``) that answers one JSON request
    per line with one JSON answer per line, in order; a thread collects the answers."""

    def __init__(self):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "oneepoch.live_forecast"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
            start_new_session=True,  # a Ctrl-C is the trainer's to handle, not the worker's
        )
        self.answers: queue.Queue = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.answers.put(json.loads(line))
        self.answers.put({"error": f"the forecast worker exited ({self.proc.wait()})"})

    def submit(self, request: dict) -> None:
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        except OSError:
            pass  # it has gone: its answer is the error the reader queued

    def result(self, block: bool) -> dict | None:
        try:
            return self.answers.get(block=block)
        except queue.Empty:
            return None

    def close(self, wait: bool) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        if not wait:
            self.proc.kill()
        self.proc.wait()
        self.reader.join(timeout=10)  # it ends at the pipe's end, which the exit gives
        self.proc.stdout.close()


def serve(stdin=None, stdout=None) -> None:
    """The worker: at the lowest CPU priority, one answer per request line."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    try:
        os.nice(19)  # training comes first
    except OSError:
        pass
    for line in stdin:
        request = json.loads(line)
        try:
            record = forecast_record(
                request["run_dir"],
                request["step"],
                request["final_step"],
                target_loss=request.get("target_loss"),
                companion=request.get("companion"),
            )
            answer = {"record": record}
        except Exception as exc:  # noqa: BLE001 - said by the trainer; training goes on
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        stdout.write(json.dumps(jsonable(answer)) + "\n")
        stdout.flush()


if __name__ == "__main__":
    serve()
