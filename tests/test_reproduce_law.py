"""`reproduce --law`: experiment 1's speedup as a fitted data-constrained law predicts it."""

import json

import numpy as np
import pytest

from oneepoch.analysis.scaling import DataConstrainedForm, ScalingLaw
from oneepoch.reproduce import law_prediction
from oneepoch.reproduce.experiments import plan_job
from oneepoch.reproduce.presets import get_preset

LAW = {"E": 3.0, "A": 60.0, "B": 400.0, "alpha": 0.3, "beta": 0.3, "R_D_star": 8.0, "R_N_star": 4.0}


def write_law(path, not_identified=()):
    rng = np.random.default_rng(0)
    names = DataConstrainedForm.param_names
    reps = np.array([LAW[k] for k in names]) * np.exp(rng.normal(0, 0.02, (50, len(names))))
    obj = {
        "form": "data-constrained",
        "replicates": {"names": list(names), "values": reps.tolist()},
    }
    for k in names:
        obj[k] = {"value": LAW[k], "ci_low": None, "ci_high": None, "se": None}
        if k in not_identified:
            obj[k]["note"] = "at bound: not identified by these data"
    path.write_text(json.dumps(obj))
    return path


def job_for(law_path):
    preset = get_preset("tiny")
    rules = (*preset.rules, f"fitted:{law_path}")
    plan = plan_job(preset, 3_000_000, 4096, (4.0, 10.0), rules)
    return {"plan": plan, "preset_settings": preset.to_json()}


def measured(epochs, median):
    return {"epochs": epochs, "summary": {"vs_repeated": {"step_speedup": {"median": median}}}}


def test_the_laws_speedup_is_where_one_epoch_reaches_the_repeated_runs_final_loss(tmp_path):
    job = job_for(write_law(tmp_path / "law.json"))
    assert law_prediction.law_path(job) == str(tmp_path / "law.json")
    pred = law_prediction.predict(job)
    law = ScalingLaw("data-constrained", LAW)
    n, tokens = pred["params"], pred["tokens"]
    speedups = []
    for row in pred["exp1"]:
        est = row["step_speedup"]
        assert est["ci_low"] <= est["value"] <= est["ci_high"]
        d = tokens / est["value"]
        repeated = law.predict(n, tokens, tokens / row["epochs"])
        assert law.predict(n, d, d) == pytest.approx(repeated, rel=1e-4)
        speedups.append(est["value"])
    assert 1 < speedups[0] < speedups[1]  # more epochs, more to gain from one
    afford = pred["epochs_affordable"]["penalties"]
    assert afford[0]["epochs"]["value"] < afford[1]["epochs"]["value"]
    blocks = law_prediction.blocks(pred, [measured(4.0, 1.3), measured(10.0, 2.1)])
    table = next(b for b in blocks if b[0] == "table")
    assert table[2][0][:2] == ["4", "1.30x"] and table[2][0][2].startswith(f"{speedups[0]:.2f}x [")
    afford_rows = [b for b in blocks if b[0] == "table"][1][2]
    assert afford_rows[0][0] == "epochs this corpus affords (1% loss penalty)"


def test_no_number_where_the_laws_r_d_is_not_identified(tmp_path):
    job = job_for(write_law(tmp_path / "law.json", not_identified=("R_D_star",)))
    pred = law_prediction.predict(job)
    assert all(
        "step_speedup" not in row and "not identified" in row["note"] for row in pred["exp1"]
    )
    assert all(r["epochs"] is None for r in pred["epochs_affordable"]["penalties"])
    assert law_prediction.predict({"plan": {"exp4": []}}) is None
