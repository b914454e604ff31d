"""``oneepoch plan --check RUN_DIR``: what the plan predicted against what the run did.

Predictions come from the plan's sidecar (``--plan FILE``, else ``RUN_DIR/plan.json``) when
its config matches the run's; otherwise they are re-derived from the run's config.toml with
this machine's calibration, as the planner would have made them.

Measured: training wall-clock is run.json's ``final.wall_s`` (evaluation excluded). Elapsed
time is run.json's ``final.elapsed_s`` when the trainer records it, else the time from
writing config.toml to the last write of run.json, which leaves out process start-up and
opening the dataset; the prediction is compared without its start-up part then.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from oneepoch.errors import UserError
from oneepoch.plan.calibrate import MEASURE_SECONDS

# Settings that decide the run's cost: a plan whose config differs did not make this run.
_MATCH = {
    "model": ("n_layer", "n_head", "d_model", "seq_len"),
    "train": ("batch_size", "tokens", "steps", "dtype"),
}


def _config_matches(plan_cfg: dict, run_cfg: dict) -> bool:
    return all(
        plan_cfg.get(sec, {}).get(k) == run_cfg.get(sec, {}).get(k)
        for sec, keys in _MATCH.items()
        for k in keys
    )


def _compare(predicted: float | None, actual: float | None) -> dict:
    ratio = actual / predicted if predicted and actual is not None else None
    return {"predicted": predicted, "actual": actual, "ratio": ratio}


def check_run(
    run_dir: str | Path,
    plan_path: str | Path | None = None,
    *,
    measure: bool = True,
    recalibrate: bool = False,
    seconds: float = MEASURE_SECONDS,
) -> dict:
    """Predicted vs actual training wall-clock, elapsed time, tokens/s, evaluations, loss."""
    from oneepoch.config import RunConfig, load_toml
    from oneepoch.plan.planfile import read_plan
    from oneepoch.rundir import CONFIG, INFO, RunDir

    files = RunDir(run_dir)
    run_dir, info_path, cfg_path = files.path, files.info, files.config
    if not info_path.is_file() or not cfg_path.is_file():
        raise UserError(
            f"{run_dir} is not a run directory (no {INFO} or {CONFIG}); pass one written by "
            "`oneepoch train`."
        )
    try:
        info = files.read_info()
    except ValueError:
        raise UserError(f"{info_path} is not valid JSON.") from None
    run_cfg = load_toml(cfg_path)
    cfg = RunConfig.from_dict(run_cfg, str(cfg_path))
    final = info.get("final") or {}
    if not final.get("step"):
        raise UserError(f"{run_dir} has no finished steps yet; check it after training.")

    notes: list[str] = []
    if info.get("status") != "completed":
        notes.append(f"the run is {info.get('status')}, not completed: it stopped early")
    plan = None
    path = Path(plan_path) if plan_path else files.plan
    if plan_path or path.is_file():
        plan = read_plan(path)
        if not _config_matches(plan.get("config", {}), run_cfg):
            notes.append(f"{path} planned a different run; predictions re-derived instead")
            plan = None
    if plan is not None:
        pred = plan["prediction"]
        est, pred_loss, rule, source = (
            pred["estimate"],
            pred.get("pred_loss"),
            plan["chosen"],
            "plan",
        )
    else:
        est = _rederive(cfg, info, measure, recalibrate, seconds)
        pred_loss, rule, source = None, None, "re-derived from config.toml"

    elapsed, elapsed_pred = final.get("elapsed_s"), est["elapsed_s"]
    if elapsed is None:
        elapsed = info_path.stat().st_mtime - cfg_path.stat().st_mtime
        elapsed_pred = est["elapsed_s"] - est["startup_s"]
        notes.append(
            "elapsed is measured from config.toml to the final run.json, so process start-up "
            f"(~{est['startup_s']:.0f} s predicted) is left out of both sides"
        )
    evals = _count_evaluations(files.metrics)
    val = final.get("val_loss")
    return {
        "run": str(run_dir),
        "status": info.get("status"),
        "predictions": source,
        "rule": rule,
        "steps": final.get("step"),
        "train_s": _compare(est["train_s"], final.get("wall_s")),
        "elapsed_s": _compare(elapsed_pred, elapsed),
        "tokens_per_s": _compare(est["tokens_per_s"], info.get("tokens_per_s")),
        "evaluations": {"predicted": est["evaluations"], "actual": evals},
        "val_loss": _compare(pred_loss, val) if pred_loss is not None else {"actual": val},
        "notes": notes,
    }


def _rederive(cfg, info: dict, measure: bool, recalibrate: bool, seconds: float) -> dict:
    from oneepoch.config import total_steps
    from oneepoch.plan.calibrate import Calibration
    from oneepoch.plan.estimate import estimate_run

    m, t = cfg.model, cfg.train
    dtype = info.get("dtype") or t.dtype
    device = info.get("hardware", {}).get("device") or t.device
    calib = Calibration(device, dtype, measure=measure, recalibrate=recalibrate, seconds=seconds)
    shape = replace(m.shape(), vocab_size=info.get("data", {}).get("vocab_size") or m.vocab_size)
    steps = total_steps(cfg) or int(info["final"]["step"])
    if measure and not calib.has(shape, t.batch_size):
        try:
            calib.measure(shape, t.batch_size)
        finally:
            calib.close()
    rate = calib.rate(shape, t.batch_size)
    val_tokens = info.get("data", {}).get("val_tokens_evaluated") or t.eval_tokens
    est = estimate_run(
        shape.seq_len,
        t.batch_size,
        steps,
        rate,
        max(1, val_tokens // m.seq_len),
        0,
        t.eval_every,
        t.checkpoint_every,
    )
    return est.to_json()


def _count_evaluations(metrics: Path) -> int | None:
    if not metrics.is_file():
        return None
    steps = set()
    for line in metrics.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("val_loss") is not None:
            steps.add(rec.get("step"))
    return len(steps)
