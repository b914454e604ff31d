"""compare: exact speedups on constructed curves, and honest extrapolation when a run
never reaches the target."""

import numpy as np
import pytest

from oneepoch.analysis.compare import compare_runs
from oneepoch.analysis.runs import load_run
from oneepoch.analysis.synthetic import power_law, write_run


def _curve(k):
    return 2.0 + 3.0 * k**-0.5


def _scaled_pair(tmp_path, noise=0.004):
    """B is A with every cost axis divided by 2.5: A evaluates at steps 5k, B at 2k, with
    the same losses (same noise draws) at each k."""
    k = np.arange(1, 81)
    a = write_run(
        tmp_path / "a",
        lambda tok, st: _curve(st / 5),
        total_steps=400,
        eval_steps=5 * k,
        noise=noise,
        seed=11,
    )
    b = write_run(
        tmp_path / "b",
        lambda tok, st: _curve(st / 2),
        total_steps=160,
        eval_steps=2 * k,
        noise=noise,
        seed=11,
    )
    return load_run(a), load_run(b)


def test_known_speedup_is_exact_at_the_default_target(tmp_path):
    a, b = _scaled_pair(tmp_path)
    out = compare_runs(a, b)
    assert out["target_loss"] == pytest.approx(min(a.evals["val_loss"]))
    for name in ("wall_clock_speedup", "step_speedup", "token_speedup", "flop_speedup"):
        assert out[name] == pytest.approx(2.5, rel=1e-12), name
    assert out["A"]["reached"] and out["B"]["reached"] and not out["extrapolated"]


def test_known_speedup_is_exact_between_eval_points(tmp_path):
    a, b = _scaled_pair(tmp_path)
    losses = a.evals["val_loss"]
    target = 0.5 * (losses[20] + losses[21])  # between evaluations, so interpolated
    out = compare_runs(a, b, target)
    assert out["token_speedup"] == pytest.approx(2.5, rel=1e-12)
    assert out["wall_clock_speedup"] == pytest.approx(2.5, rel=1e-12)


def test_first_crossing_counts_not_later_ones(tmp_path):
    # noise makes the curve dip below the target and come back: the first dip counts
    run = write_run(
        tmp_path / "r",
        lambda tok, st: np.array([5.0, 4.0, 2.9, 3.2, 2.5])[: st.size],
        total_steps=5,
        eval_steps=np.arange(1, 6),
    )
    other = write_run(
        tmp_path / "o",
        lambda tok, st: np.array([5.0, 4.0, 3.0, 2.0, 1.9]),
        total_steps=5,
        eval_steps=np.arange(1, 6),
    )
    out = compare_runs(load_run(run), load_run(other), 3.0)
    # run reaches 3.0 between step 2 (4.0) and step 3 (2.9), log-log interpolated
    frac = np.log(4.0 / 3.0) / np.log(4.0 / 2.9)
    assert out["A"]["steps"] == pytest.approx(np.exp(np.log(2) + frac * np.log(3 / 2)))
    assert out["B"]["steps"] == pytest.approx(3.0)


def test_run_that_never_reaches_target_is_extrapolated_and_flagged(tmp_path):
    fast = write_run(
        tmp_path / "fast", power_law(2.0, 400.0, 0.3), total_steps=3000, noise=0.003, seed=1
    )
    slow = write_run(
        tmp_path / "slow",
        power_law(2.0, 400.0 * 3.0**0.3, 0.3),
        total_steps=1000,
        noise=0.003,
        seed=2,
    )
    a, b = load_run(slow), load_run(fast)
    target = float(min(b.evals["val_loss"]))
    out = compare_runs(a, b, target, n_boot=150)
    assert out["A"]["reached"] is False and out["A"]["extrapolated"] is True
    assert out["B"]["reached"] is True
    assert out["extrapolated"] and any("never reached" in n for n in out["notes"])
    tokens = out["A"]["tokens"]
    true_tokens = 3.0 * (400.0 / (target - 2.0)) ** (1 / 0.3)  # slow needs 3x the tokens
    assert tokens["ci_low"] <= true_tokens <= tokens["ci_high"]
    speedup = out["speedup_intervals"]["token_speedup"]
    assert speedup["ci_low"] < out["token_speedup"] < speedup["ci_high"]
    assert speedup["ci_low"] <= true_tokens / out["B"]["tokens"] <= speedup["ci_high"]


def test_no_common_loss_means_no_speedup(tmp_path):
    a = write_run(tmp_path / "a", power_law(3.0, 400.0, 0.3), total_steps=500, noise=0.003, seed=1)
    b = write_run(tmp_path / "b", power_law(2.5, 400.0, 0.3), total_steps=500, noise=0.003, seed=2)
    ra, rb = load_run(a), load_run(b)
    below_both = 0.9 * min(ra.evals["val_loss"].min(), rb.evals["val_loss"].min())
    out = compare_runs(ra, rb, below_both, n_boot=50)
    assert out["no_common_loss"] and "speedup_intervals" not in out
    assert all(out[name] is None for name in ("wall_clock_speedup", "step_speedup"))
    assert any("no speedup to report" in n for n in out["notes"])


def test_a_far_extrapolation_is_reported_as_a_bound(tmp_path):
    # The slow run stops long before the fast run's best loss: any ratio is only a bound.
    fast = write_run(tmp_path / "f", power_law(2.0, 400.0, 0.3), total_steps=3000, seed=1)
    slow = write_run(tmp_path / "s", power_law(2.0, 4000.0, 0.3), total_steps=300, seed=2)
    a, b = load_run(slow), load_run(fast)
    out = compare_runs(a, b, float(b.evals["val_loss"].min()), n_boot=50)
    assert out["bound_only"] and out["bound"]["kind"] == "lower"
    # A needs more than its whole run: the bound is its length over B's cost to the target.
    assert out["bound"]["step_speedup"] == pytest.approx(300 / out["B"]["steps"])
    assert any("only a bound" in n for n in out["notes"])
