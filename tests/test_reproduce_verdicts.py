"""The rules that turn measurements into verdicts, and the throughput check behind them."""

from __future__ import annotations

import json

import pytest

from oneepoch.analysis.compare import throughput_check
from oneepoch.analysis.runs import load_run
from oneepoch.reproduce.verdicts import CONTRADICTS, SUPPORTS, UNDECIDED, judge_range, spread


def comp(speedup, extrapolated=False, steady=True, at_median=None):
    return {
        "wall_clock_speedup": speedup,
        "extrapolated": extrapolated,
        "throughput_steady": steady,
        "wall_clock_speedup_at_median_throughput": at_median,
    }


@pytest.mark.parametrize(
    ("speedups", "verdict"),
    [
        ([2.0, 2.5, 3.0], SUPPORTS),  # inside
        ([1.2, 1.5, 2.0], SUPPORTS),  # overlaps the low end
        ([1.1, 1.3, 1.5], CONTRADICTS),  # every seed below the range
        ([3.5, 4.0, 6.0], CONTRADICTS),  # every seed above it
        ([1.5, 2.0, None], UNDECIDED),  # a seed without a speedup
    ],
)
def test_range_rule(speedups, verdict):
    assert judge_range([comp(s) for s in speedups], (1.9, 3.3))["verdict"] == verdict


def test_extrapolated_costs_decide_nothing():
    out = judge_range([comp(2.5), comp(2.6, extrapolated=True)], (1.9, 3.3))
    assert out["verdict"] == UNDECIDED and any("extrapolated" in w for w in out["why"])


def test_a_load_bent_comparison_is_judged_at_median_throughput():
    out = judge_range([comp(0.6, steady=False, at_median=2.4)], (1.9, 3.3))
    assert out["verdict"] == SUPPORTS
    assert any("median throughput" in w for w in out["why"])
    assert any("one seed" in w for w in out["why"])


def test_spread_over_seeds():
    s = spread([2.0, 3.0, 2.5])
    assert (s["median"], s["min"], s["max"], s["n"]) == (2.5, 2.0, 3.0, 3)
    assert "note" not in s
    assert "no spread" in spread([2.0])["note"]


def write_run(path, rates, seconds_each=2.0, shape=(2, 2, 128)):
    """A run directory whose throughput is ``rates`` tokens/s in consecutive stretches."""
    path.mkdir(parents=True)
    lines, tokens, wall, step = [], 0.0, 0.0, 0
    for rate in rates:
        for _ in range(10):
            step += 1
            wall += seconds_each / 10
            tokens += rate * seconds_each / 10
            lines.append({"step": step, "tokens": tokens, "wall_s": wall, "train_loss": 5.0})
    lines[-1]["val_loss"] = 4.0
    (path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    n, h, d = shape
    (path / "config.toml").write_text(
        f"[model]\nn_layer = {n}\nn_head = {h}\nd_model = {d}\nseq_len = 128\n"
        "[train]\nbatch_size = 16\n"
    )
    return load_run(path)


def test_throughput_check_names_a_run_slowed_by_load(tmp_path):
    steady = write_run(tmp_path / "a", [15000] * 20)
    slowed = write_run(tmp_path / "b", [15000] * 10 + [1500] * 10)  # tenfold for half its time
    check = throughput_check({"A": steady, "B": slowed})
    assert not check["steady"]
    assert check["profiles"]["A"]["steady"] and not check["profiles"]["B"]["steady"]
    assert any("run B" in n and "median throughput" in n for n in check["notes"])


def test_throughput_check_compares_same_shape_runs(tmp_path):
    a = write_run(tmp_path / "a", [15000] * 20)
    b = write_run(tmp_path / "b", [9000] * 20)  # steady, but 1.7x slower than its twin
    c = write_run(tmp_path / "c", [9000] * 20, shape=(1, 1, 32))  # another shape: no match
    check = throughput_check({"A": a, "B": b})
    assert any("same shape" in n for n in check["notes"])
    assert throughput_check({"A": a, "C": c})["steady"]
