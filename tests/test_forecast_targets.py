"""The forecast benchmark judges issue 21's targets against the noise of a family's curves."""

import subprocess
import sys

import numpy as np

from helpers import BENCHMARKS, load_benchmark

targets = load_benchmark("forecast_targets")
family_targets, runs_targets = targets.family_targets, targets.runs_targets


def _verdicts(judged):
    return {j.target: j.verdict for j in judged}


def test_a_rule_as_good_as_the_oracle_meets_and_a_much_worse_one_is_missed():
    rng = np.random.default_rng(1)
    oracle = rng.normal(0, 0.01, 300)
    covered = np.arange(300) % 10 != 0  # 90%
    same = family_targets(rng.normal(0, 0.01, 300), covered, oracle)
    assert _verdicts(same) == {"rule/oracle": "met", "signed": "met", "coverage": "met"}
    worse = family_targets(rng.normal(0.02, 0.03, 300), covered, oracle)
    ratio, signed, _ = worse
    assert ratio.estimate > 2 and ratio.low > 1.25 and ratio.verdict == "MISSED"
    assert signed.low > 0.005 and signed.verdict == "MISSED"


def test_a_miss_that_another_draw_of_curves_could_undo_is_noise():
    rng = np.random.default_rng(2)
    # 1.4x the oracle's spread on 60 curves: the ratio's interval reaches 1.25
    ratio, signed, coverage = family_targets(
        rng.normal(0, 0.014, 60), np.ones(60, bool), rng.normal(0, 0.01, 60)
    )
    assert ratio.estimate > 1.25 and ratio.low <= 1.25 and ratio.verdict == "noise"
    assert ratio.low < ratio.estimate < ratio.high
    # 30 of 30 covered: above 95%, but Wilson's interval reaches down past it; 60 of 60 not
    all_of_30 = family_targets(np.zeros(30), np.ones(30, bool))[-1]
    assert all_of_30.estimate == 1.0 and all_of_30.low < 0.95 and all_of_30.verdict == "noise"
    assert coverage.estimate == 1.0 and coverage.low > 0.95 and coverage.verdict == "MISSED"
    # 30 of 60 covered is a real miss
    assert family_targets(np.zeros(60), np.arange(60) < 30)[-1].verdict == "MISSED"


def test_project_runs_targets_judge_the_interval_against_the_error():
    errors = np.array([0.004, -0.006, 0.008, -0.01, 0.005, -0.007, 0.009, -0.003, 0.006])
    narrow = runs_targets(errors, 2 * 2.0 * np.abs(errors))  # half-width 2x each |error|
    assert _verdicts(narrow)["half-width / median |error|"] == "met"
    wide = runs_targets(errors, 2 * 10.0 * np.full(9, 0.006))  # 10x the median |error|
    judged = {j.target: j for j in wide}["half-width / median |error|"]
    assert judged.estimate == np.float64(10.0) and judged.verdict == "MISSED"


def test_the_table_of_a_saved_run_is_the_table_the_run_printed(tmp_path):
    saved = tmp_path / "rows.json"
    run = [sys.executable, str(BENCHMARKS / "forecast.py")]
    args = ["--seeds", "300:304", "--bootstrap", "30", "--oracle-true-form"]
    first = subprocess.run(run + args + ["--json", str(saved)], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    again = subprocess.run(run + ["--table", str(saved)], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert again.stdout == first.stdout
    assert "targets (issue 21)" in first.stdout and "synthetic, all" in first.stdout


def test_a_setup_biased_across_seeds_is_missed_though_the_pooled_runs_meet_their_targets():
    from forecast import targets_table

    def row(setup, seed, error):  # intervals +-2.5x the setup's typical error
        width = 0.3 if setup == "drop" else 0.02
        return {"run": f"runs/seed{seed}/{setup}", "error": error, "width": width}

    real = [row("plain", s, e) for s, e in enumerate([-0.004, 0.003, -0.006, 0.005])]
    real += [row("drop", s, e) for s, e in enumerate([0.05, 0.06, 0.07, 0.065])]
    real += [row("other", s, e) for s, e in enumerate([0.002, -0.003, 0.004, -0.005])]
    table = targets_table([], real, oracle=False)
    pooled = next(line for line in table.splitlines() if line.startswith("project runs  "))
    assert "signed" in pooled and pooled.endswith("met")
    missed = next(line for line in table.splitlines() if line.startswith("  MISSED: "))
    assert "drop signed" in missed and "plain" not in missed and "other" not in missed
