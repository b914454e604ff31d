"""Every number of the report, computed from the job's run directories (torch-free).

Each experiment is measured per seed; speedups are then summarised over seeds (median,
min-max) and each claim of the paper is set beside the measurement with a verdict
(``verdicts``), whose rule is stated with it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from oneepoch.analysis.compare import SPEEDUPS, compare_runs, throughput_profile
from oneepoch.analysis.curves import longest_true_run
from oneepoch.analysis.runs import Run, load_run
from oneepoch.atomic import write_atomic
from oneepoch.errors import UserError
from oneepoch.reproduce import law_prediction, verdicts
from oneepoch.reproduce.experiments import RunSpec, one_epoch_curves
from oneepoch.reproduce.jobdir import JobDir
from oneepoch.reproduce.verdicts import FORECAST_FRACTION, HOLDS_WITHIN, TURN_UP

N_BOOT = 100


JobRuns = dict[tuple[int, str], Run]  # every run of the job by (seed, key), read once


def load_job_runs(folder: JobDir, job: dict) -> JobRuns:
    plan = job["plan"]
    return {
        (seed, key): load_job_run(folder, plan, seed, key)
        for seed in range(job["seeds"])
        for key in plan["runs"]
    }


def compute_results(folder: JobDir, job: dict, runs: JobRuns) -> dict:
    plan, seeds = job["plan"], range(job["seeds"])
    per_seed = [_seed_results(seed, plan, runs) for seed in seeds]
    exps = _summaries(plan, per_seed)
    claims = verdicts.judge(exps, job)
    first = runs[(0, plan["exp2"]["0"])]
    return {
        "format": "oneepoch-reproduce-results",
        "version": 1,
        "preset": job["preset_settings"],
        "data": {"path": job["data"], "fingerprint": job["data_fingerprint"], **plan["corpus"]},
        "machine": {
            "hardware": first.info.get("hardware"),
            "dtype": first.info.get("dtype"),
            "peak_flops": first.info.get("peak_flops"),
            "torch_version": first.info.get("torch_version"),
            "oneepoch_version": first.info.get("oneepoch_version"),
        },
        "seeds": job["seeds"],
        "schedule": {
            "interleaved": not job.get("sequential", False),
            "segments": 1 if job.get("sequential") else job["preset_settings"]["segments"],
        },
        "runs": {
            folder.run_name(s, k): _run_summary(folder.path, r) | _prefix_note(plan, k)
            for (s, k), r in runs.items()
        },
        "experiments": exps,
        "claims": claims,
        "law": law_prediction.predict(job),  # `--law`: what a fitted law predicts (or None)
    }


def load_job_run(folder: JobDir, plan: dict, seed: int, key: str) -> Run:
    """A run of the job: its folder, or for a run read from a longer one's beginning, that
    run's metrics up to its last step (and its config with that many steps)."""
    spec = RunSpec(**plan["runs"][key])
    run = load_run(folder.trained_run(seed, key, plan).path)
    return prefix(run, spec.steps) if spec.prefix_of else run


def prefix(run: Run, steps: int) -> Run:
    """``run`` as if it had stopped after ``steps`` steps."""
    lines = {k: v[run.lines["step"] <= steps] for k, v in run.lines.items()}
    evals = {k: v[run.evals["step"] <= steps] for k, v in run.evals.items()}
    config = {**run.config, "train": {**run.config.get("train", {}), "steps": steps}}
    info = {k: v for k, v in run.info.items() if k != "final"}
    return Run(run.path, lines, evals, info=info, config=config)


def _prefix_note(plan: dict, key: str) -> dict:
    source = plan["runs"][key].get("prefix_of")
    return {"read_from": source} if source else {}


def _seed_results(seed: int, plan: dict, runs: dict) -> dict:
    def run(key: str) -> Run:
        return runs[(seed, key)]

    exp1 = []
    for x in plan["exp1"]:
        one, rep, reg = run(x["one_epoch"]), run(x["repeated"]), run(x["regularized"])
        exp1.append(
            {
                "epochs": x["epochs"],
                "curves": {
                    k: _curve_facts(run(x[k])) for k in ("one_epoch", "repeated", "regularized")
                },
                # (a) against (b)'s and (c)'s best losses: cost of the multi-epoch run / (a)'s.
                "vs_repeated": _comparison(rep, one, _best(rep)),
                "vs_regularized": _comparison(reg, one, _best(reg)),
            }
        )
    zero = run(plan["exp2"]["0"])
    zero_rate = (throughput_profile(zero) or {}).get("median_tokens_per_s")
    exp2 = {}
    for p, key in plan["exp2"].items():
        if p == "0":
            continue
        r = run(key)
        rate = (throughput_profile(r) or {}).get("median_tokens_per_s")
        exp2[p] = {
            "final_loss": _final(r),
            "gap": _final(r) - _final(zero),
            # cost of the dropout run to reach dropout 0's final loss / dropout 0's cost
            "slowdown": _comparison(r, zero, _final(zero)),
            # dropout's own cost per step here (the runs trained interleaved): 1 - its
            # median tokens/s over dropout 0's
            "throughput_cost_per_step": 1 - rate / zero_rate if rate and zero_rate else None,
        }
    exp2_zero = {"final_loss": _final(zero)}
    exp3 = {
        key: _power_law(run(key)) | {"judged": key in plan["exp3"]["power_law"]}
        for key in one_epoch_curves(plan)
    }
    exp4 = []
    for b in plan["exp4"]:
        base = run(b["baseline"])
        target = _final(base)
        exp4.append(
            {
                "fraction": b["fraction"],
                "baseline_final_loss": target,
                "rules": {
                    name: _comparison(base, run(r["run"]), target) for name, r in b["rules"].items()
                },
            }
        )
    e5 = plan["exp5"]
    reg = run(e5["baseline"])
    exp5 = {name: _comparison(reg, run(key), _best(reg)) for name, key in e5["adjusted"].items()}
    return {
        "seed": seed,
        "exp1": exp1,
        "exp2": {"zero": exp2_zero, "dropout": exp2},
        "exp3": exp3,
        "exp4": exp4,
        "exp5": exp5,
    }


def _comparison(slow: Run, fast: Run, target: float) -> dict:
    """Costs of ``slow`` (A) and ``fast`` (B) to reach ``target`` and A/B for each cost.

    A run that never reaches the target has its cost extrapolated by compare_runs, and its
    whole run bounds the ratio (``bound``).
    """
    res = compare_runs(slow, fast, target, n_boot=N_BOOT)
    costs = {side: _plain_costs(res[side]) for side in ("A", "B")}
    out = {
        "run_a": str(slow.path),
        "run_b": str(fast.path),
        "target_loss": res["target_loss"],
        "cost_a": costs["A"],
        "cost_b": costs["B"],
        "reached": {"A": res["A"]["reached"], "B": res["B"]["reached"]},
        "extrapolated": res["extrapolated"],
        "wall_clock_speedup_at_median_throughput": res["wall_clock_speedup_at_median_throughput"],
        "throughput_steady": res["throughput"]["steady"],
        "notes": res.get("notes", []),
    }
    for axis, name in SPEEDUPS.items():
        a, b = costs["A"].get(axis), costs["B"].get(axis)
        out[name] = a / b if a is not None and b and b > 0 else None
    if "bound" in res:  # a run never reached the target: its whole length bounds the ratio
        out["bound"] = res["bound"]
        out["bound_only"] = res.get("bound_only", False)
    return out


def _plain_costs(side: dict) -> dict:
    out = {}
    for axis in SPEEDUPS:
        value = side.get(axis)
        if isinstance(value, dict):
            value = value.get("value")
        if isinstance(value, (int, float)) and np.isfinite(value):
            out[axis] = float(value)
    return out


def _best(run: Run) -> float:
    return float(np.min(run.evals["val_loss"]))


def _final(run: Run) -> float:
    return float(run.evals["val_loss"][-1])


def _curve_facts(run: Run) -> dict:
    """Best and final validation loss, and where the curve turns up (overfitting)."""
    ev = run.evals
    i = int(np.argmin(ev["val_loss"]))
    best, final = float(ev["val_loss"][i]), float(ev["val_loss"][-1])
    turns_up = final > best * (1 + TURN_UP) and i < len(ev["val_loss"]) - 1
    train = run.lines["train_loss"]
    return {
        "best_loss": best,
        "best_step": int(ev["step"][i]),
        "final_loss": final,
        "final_train_loss": float(train[np.isfinite(train)][-1]),
        "turns_up": bool(turns_up),
        "turns_up_at_step": int(ev["step"][i]) if turns_up else None,
        "rise_after_best": final / best - 1,
    }


def _power_law(run: Run) -> dict:
    """The power-law fits of a one-epoch curve, where they hold, and the forecast from its
    first FORECAST_FRACTION next to the observed final loss."""
    from oneepoch.analysis.runfit import fit_run

    out: dict = {"run": str(run.path), "steps": int(run.lines["step"][-1])}
    try:
        full = fit_run(run, n_boot=N_BOOT)
    except UserError as exc:
        return {**out, "error": str(exc)}
    out["forms"] = {name: _form_summary(fit) for name, fit in full.fits.items()}
    if "power" in full.fits:
        out["holds"] = _holds(full.fits["power"])
    final_tokens = run.final_tokens
    try:
        early = fit_run(run, use_first=FORECAST_FRACTION, n_boot=N_BOOT)
        pred = early.predict_at(final_tokens)
    except UserError as exc:
        out["forecast"] = {"error": str(exc)}
        return out
    fc, observed = pred["forecast"], pred.get("observed_loss")
    # what is checked is one evaluation, the last: its interval counts the evaluations' scatter
    low, high = fc["evaluation"]["ci_low"], fc["evaluation"]["ci_high"]
    out["forecast"] = {
        "use_first": FORECAST_FRACTION,
        "at_tokens": final_tokens,
        "form": fc.get("form"),
        "value": fc.get("value"),
        "ci_low": low,
        "ci_high": high,
        "curve_ci": [fc.get("ci_low"), fc.get("ci_high")],
        "observed": observed,
        "error": (fc["value"] / observed - 1) if fc.get("value") and observed else None,
        "covered": bool(
            observed is not None
            and low is not None
            and high is not None
            and low <= observed <= high
        ),
        "warnings": fc.get("warnings", []),
        "near_ngram_levels": fc.get("near_ngram_levels", []),
    }
    return out


def _form_summary(fit) -> dict:
    body = fit.to_json()
    return {"formula": fit.form.formula, "params": body.get("params"), "n": int(fit.x.size)}


def _holds(fit) -> dict:
    """The widest run of consecutive fitted points within HOLDS_WITHIN of the power law."""
    resid = fit.loss / fit.predict(fit.x) - 1
    lo, hi = longest_true_run(np.abs(resid) <= HOLDS_WITHIN)
    decades = float(np.log10(fit.x[hi - 1] / fit.x[lo])) if hi > lo else 0.0
    return {
        "within": HOLDS_WITHIN,
        "from_tokens": float(fit.x[lo]) if hi > lo else None,
        "to_tokens": float(fit.x[hi - 1]) if hi > lo else None,
        "decades": decades,
        "fitted_decades": float(np.log10(fit.x[-1] / fit.x[0])),
        "max_abs_residual": float(np.max(np.abs(resid))),
    }


def _summaries(plan: dict, per_seed: list[dict]) -> dict:
    """Per-seed values side by side, and their spread, for every measured quantity."""

    def spread(values):
        return verdicts.spread(values)

    exp1 = []
    for i, x in enumerate(plan["exp1"]):
        rows = [s["exp1"][i] for s in per_seed]
        exp1.append(
            {
                "epochs": x["epochs"],
                "runs": {k: x[k] for k in ("one_epoch", "repeated", "regularized")},
                "per_seed": rows,
                "summary": {
                    vs: {name: spread([r[vs][name] for r in rows]) for name in _SPEEDUP_NAMES}
                    for vs in ("vs_repeated", "vs_regularized")
                },
            }
        )
    exp2 = {
        "runs": plan["exp2"],
        "per_seed": [s["exp2"] for s in per_seed],
        "summary": {
            p: {
                "gap": spread([s["exp2"]["dropout"][p]["gap"] for s in per_seed]),
                "throughput_cost_per_step": spread(
                    [s["exp2"]["dropout"][p]["throughput_cost_per_step"] for s in per_seed]
                ),
                **{
                    name: spread([s["exp2"]["dropout"][p]["slowdown"][name] for s in per_seed])
                    for name in _SPEEDUP_NAMES
                },
            }
            for p in per_seed[0]["exp2"]["dropout"]
        },
    }
    exp3 = {**plan["exp3"], "per_seed": [s["exp3"] for s in per_seed]}
    exp4 = []
    for i, b in enumerate(plan["exp4"]):
        rows = [s["exp4"][i] for s in per_seed]
        exp4.append(
            {
                **{k: b[k] for k in ("fraction", "flops", "baseline")},
                "rules": b["rules"],
                "per_seed": rows,
                "summary": {
                    name: {n: spread([r["rules"][name][n] for r in rows]) for n in _SPEEDUP_NAMES}
                    for name in b["rules"]
                },
            }
        )
    exp5 = {
        **plan["exp5"],
        "per_seed": [s["exp5"] for s in per_seed],
        "summary": {
            name: {n: spread([s["exp5"][name][n] for s in per_seed]) for n in _SPEEDUP_NAMES}
            for name in plan["exp5"]["adjusted"]
        },
    }
    return {"exp1": exp1, "exp2": exp2, "exp3": exp3, "exp4": exp4, "exp5": exp5}


_SPEEDUP_NAMES = (*SPEEDUPS.values(), "wall_clock_speedup_at_median_throughput")


def _run_summary(out: Path, run: Run) -> dict:
    cfg, info = run.config, run.info
    facts = _curve_facts(run)
    prof = throughput_profile(run)
    return {
        "dir": str(run.path.relative_to(out)),
        "status": info.get("status"),
        "model": cfg.get("model"),
        "epochs": cfg.get("data", {}).get("epochs"),
        "steps": int(run.lines["step"][-1]),
        "tokens": int(run.lines["tokens"][-1]),
        "unique_tokens": int(np.nanmax(run.lines["unique_tokens"])),
        "params": info.get("params"),
        "flops_per_token": info.get("flops_per_token"),
        "wall_s": float(run.lines["wall_s"][-1]),
        "throughput": prof,
        **facts,
    }


def write_results(path: Path, results: dict) -> None:
    write_atomic(path, (json.dumps(results, indent=1, default=_jsonable) + "\n").encode())


def _jsonable(value):
    if isinstance(value, verdicts.Claim):
        return value.to_dict()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON: {type(value)}")
