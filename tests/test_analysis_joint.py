"""The schedule-aware law fitted jointly over runs of one setup (`fit --with`)."""

import json

import numpy as np
import pytest

from oneepoch.analysis.joint import fit_joint
from oneepoch.analysis.lr_schedule import LRSchedule
from oneepoch.analysis.runs import load_run
from oneepoch.analysis.synthetic import cosine_lr, write_run
from oneepoch.cli import main

TRUTH = {"L0": 2.0, "A": 8.0, "alpha": 0.4, "C": 2e-4}
TOTAL = 3000


def _law_run(path, total, seed):
    """A run with linear warm-up then cosine decay over ``total`` steps, whose loss
    follows the schedule-aware law exactly (times 0.3% noise)."""

    def lr(s):
        return cosine_lr(s, 1e-3, 100, total)

    steps = np.arange(1, total + 1)
    schedule = LRSchedule(steps, lr(steps))

    def loss(tokens, st):
        s1, s2 = schedule.areas(st)
        return TRUTH["L0"] + TRUTH["A"] * s1 ** -TRUTH["alpha"] - TRUTH["C"] * s2

    write_run(
        path,
        loss,
        total_steps=total,
        eval_every=50,
        warmup_steps=100,
        noise=0.003,
        seed=seed,
        lr=lr,
    )
    return load_run(path), loss


def test_a_short_decay_run_measures_the_annealing_term_for_the_forecast(tmp_path):
    """From its first 30% a cosine run shows too little decay to measure C; fitted jointly
    with a 1,000-step run of the same setup that decayed fully, C is measured and the
    final loss forecast under the planned schedule lands on the truth."""
    target, loss = _law_run(tmp_path / "long", TOTAL, seed=1)
    short, _ = _law_run(tmp_path / "short", 1000, seed=2)
    truth = float(loss(None, np.array([TOTAL]))[0])

    out = fit_joint(target, [short], use_first=0.3, n_boot=100)
    assert out["c_measured_by"] == [str(short.path)] and out["notes"] == []
    for name, value in TRUTH.items():
        est = out["params"][name]
        assert est["ci_low"] <= value <= est["ci_high"], (name, est)
    forecast = out["forecast"]
    assert forecast["ci_low"] <= truth <= forecast["ci_high"]
    assert abs(forecast["value"] / truth - 1) < 0.015  # (-1.2% here; within its interval)

    alone = fit_joint(target, [], use_first=0.3, n_boot=0)
    assert alone["params"]["C"]["value"] == 0.0
    assert "leaves out the loss drop of the LR decay" in alone["notes"][0]
    assert alone["forecast"]["value"] > 1.03 * truth  # the decay's drop is missing


def test_fit_with_prints_the_joint_forecast(capsys, tmp_path):
    target, _ = _law_run(tmp_path / "long", TOTAL, seed=1)
    short, _ = _law_run(tmp_path / "short", 1000, seed=2)
    argv = ["fit", str(target.path), "--use-first", "0.3", "--with", str(short.path)]
    assert main([*argv, "--bootstrap", "50"]) == 0
    out = capsys.readouterr().out
    assert "joint schedule-aware fit over" in out
    assert "forecast under the planned schedule: loss at t = 2.458e+07" in out
    assert main([*argv, "--bootstrap", "0", "--json"]) == 0
    joint = json.loads(capsys.readouterr().out)["runs"][0]["joint"]
    assert joint["forecast"]["x"] == pytest.approx(TOTAL * 8192)
