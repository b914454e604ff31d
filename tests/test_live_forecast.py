"""The live forecast of `oneepoch train`: the same numbers as `oneepoch fit` on the same
points, the target's ETA in the progress line, an unreachable target said once."""

from __future__ import annotations

import json
import re

import pytest

import helpers
from helpers import FORECASTING, read_forecasts, read_metrics, run_cli

# 160 steps evaluated every 8: the live forecast re-fits from 30% of the run on.
ARGS = ["--steps", "160", "--batch-size", "8", "--eval-every", "8", "--log-every", "4"]
ARGS += ["--lr", "3e-3", "--warmup-steps", "10", "--schedule", "constant", *FORECASTING]


@pytest.fixture(scope="module")
def live_run(byte_dataset, tmp_path_factory):
    """A run with a target it reaches (1% above its last evaluation ... found after a first
    run), so the progress line carries an ETA; returns (run, stderr)."""
    out = tmp_path_factory.mktemp("live") / "run"
    args = ["train", "--data", str(byte_dataset), "--out", str(out), *ARGS]
    res = run_cli(*[a for a in args if a != "--quiet"], "--target-loss", "2.6")
    assert res.returncode == 0, res.stderr[-3000:]
    return out, res.stderr


def test_forecast_records_start_at_a_share_of_the_run_and_hold_an_interval(live_run):
    from oneepoch.live_forecast import MIN_SHARE

    run, _ = live_run
    records = read_forecasts(run)
    assert records, "no forecast was made"
    evals = [line["step"] for line in read_metrics(run) if "val_loss" in line]
    assert min(r["step"] for r in records) >= MIN_SHARE * 160
    for r in records:
        assert r["step"] in evals and r["at_step"] == 160 and r["step"] < 160
        low, high = r["interval"]  # the final evaluation's: the curve's, and its scatter
        assert low <= r["curve_interval"][0] < r["forecast"] < r["curve_interval"][1] <= high
        assert r["form"] in r["weights"] and isinstance(r["warnings"], list)
        assert r["target"]["loss"] == 2.6
    # the progress line (forced at the last step) shows a forecast and the target's ETA
    # (marked unsure while the fitted range ends near the data's unigram or bigram loss)
    shown = [
        f"final {r['forecast']:.3f} [{r['interval'][0]:.3f}, {r['interval'][1]:.3f}]"
        + (
            f" (unsure: near the {r['near_ngram_levels'][0]} plateau)"
            if r["near_ngram_levels"]
            else ""
        )
        + ", 2.6 "
        for r in records
    ]
    assert any(text in live_run[1] for text in shown), live_run[1][-2000:]


def test_live_forecast_equals_fit_on_the_same_points(live_run, tmp_path):
    """`oneepoch fit` on the run as it stood at a forecast's step gives the same numbers."""
    run, _ = live_run
    record = read_forecasts(run)[len(read_forecasts(run)) // 2]
    copy = tmp_path / "as-of"
    copy.mkdir()
    for name in ("config.toml", "run.json"):
        (copy / name).write_bytes((run / name).read_bytes())
    kept = [json.dumps(line) for line in read_metrics(run) if line["step"] <= record["step"]]
    (copy / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    res = run_cli(
        "fit", str(copy), "--predict-at", str(record["at_tokens"]), "--target-loss", "2.6", "--json"
    )
    assert res.returncode == 0, res.stderr
    fitted = json.loads(res.stdout)["runs"][0]
    forecast = fitted["predict_at"]["forecast"]
    assert forecast["value"] == pytest.approx(record["forecast"], rel=1e-12)
    assert [forecast["ci_low"], forecast["ci_high"]] == pytest.approx(
        record["curve_interval"], 1e-12
    )
    evaluation = forecast["evaluation"]
    assert [evaluation["ci_low"], evaluation["ci_high"]] == pytest.approx(record["interval"], 1e-12)
    assert forecast["form"] == record["form"] and forecast["weights"] == record["weights"]
    assert forecast["near_ngram_levels"] == record["near_ngram_levels"]
    assert fitted["n_fit_points"] == record["n_points"]
    steps = fitted["target"]["forecast"]["steps"]
    assert [steps["value"], steps["ci_low"], steps["ci_high"]] == record["target"]["steps"]


@helpers.slow("~30 s or more on a 2-core CPU; CI stays within its time")
def test_an_unreachable_target_is_said_once_and_can_stop_the_run(byte_dataset, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--data", str(byte_dataset), "--out", str(run), *ARGS, "--target-loss", "0.5"]
    res = run_cli(*args)
    assert res.returncode == 0, res.stderr[-3000:]
    said = [line for line in res.stderr.splitlines() if "unlikely to be reached" in line]
    assert len(said) == 1, res.stderr
    unlikely = [r for r in read_forecasts(run) if r["target"]["by_end"] == "unlikely"]
    assert len(unlikely) >= 2  # it stayed out of reach at later evaluations: said once all the same
    assert json.loads((run / "run.json").read_text())["status"] == "completed"

    stopped = tmp_path / "stopped"
    args = ["train", "--data", str(byte_dataset), "--out", str(stopped), *ARGS]
    res = run_cli(*args, "--target-loss", "0.5", "--stop-if-unreachable")
    assert res.returncode == 0, res.stderr[-3000:]
    info = json.loads((stopped / "run.json").read_text())
    assert info["status"] == "stopped"
    first = unlikely[0]["step"]  # the same curve, so the same forecasts: it stops there
    assert info["final"]["step"] == first
    assert [r["step"] for r in read_forecasts(stopped)][-1] == first
    assert re.search(r"unlikely to be reached.*stopping", res.stderr)


def test_stop_if_unreachable_needs_a_target(byte_dataset, tmp_path):
    args = ["train", "--data", str(byte_dataset), "--out", str(tmp_path / "r"), *ARGS]
    res = run_cli(*args, "--stop-if-unreachable")
    assert res.returncode == 2
    assert "needs a --target-loss" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "r").exists()


def test_refits_follow_the_steps_alone_at_most_one_per_share_of_the_run():
    from oneepoch.live_forecast import MIN_SHARE, REFIT_SHARE, refits_at
    from oneepoch.schedule import Cadence

    for steps, every in ((160, 8), (1000, 1), (5000, 250)):
        cadence = Cadence(steps, every)
        refits = [s for s in range(1, steps + 1) if refits_at(s, steps, cadence.evaluates)]
        assert refits and all(cadence.evaluates(s) for s in refits)
        assert refits[0] >= MIN_SHARE * steps and refits[-1] < steps
        assert len(refits) <= round((1 - MIN_SHARE) / REFIT_SHARE) + 1
        buckets = [s // round(REFIT_SHARE * steps) for s in refits]
        assert len(set(buckets)) == len(buckets)  # one per share of the run
    # with the default cadence (every 5% of the run), every regular evaluation re-fits
    cadence = Cadence(2000)
    regular = list(range(int(MIN_SHARE * 2000), 2000, cadence.eval_every))
    assert [s for s in range(1, 2001) if refits_at(s, 2000, cadence.evaluates)] == regular


@helpers.slow("~30 s or more on a 2-core CPU; CI stays within its time")
def test_a_planned_decay_is_left_out_unless_a_companion_run_measures_it(byte_dataset, tmp_path):
    """Cosine decay: without a companion the forecast says it leaves the decay out; with
    `--forecast-with RUN` (a run of the same setup whose LR decayed) it is the
    schedule-aware law fitted jointly with that run."""
    import numpy as np

    from oneepoch.analysis.synthetic import cosine_lr, write_run
    from oneepoch.live_forecast import forecast_record

    companion = write_run(
        tmp_path / "decayed",
        lambda t, s: 2.4 + 4.0 * np.asarray(s, dtype=float) ** -0.3,
        total_steps=160,
        tokens_per_step=8 * 64,
        eval_every=8,
        log_every=4,
        lr=lambda s: cosine_lr(s, 3e-3, 10, 160),
        warmup_steps=10,
        noise=0.003,
    )
    run = tmp_path / "cosine"
    args = [a if a != "constant" else "cosine" for a in ARGS]
    res = run_cli(
        "train",
        "--data",
        str(byte_dataset),
        "--out",
        str(run),
        *args,
        "--forecast-with",
        str(companion),
    )
    assert res.returncode == 0, res.stderr[-3000:]
    records = read_forecasts(run)
    joint = [r for r in records if r["form"] == "schedule (joint with the companion run)"]
    assert len(joint) >= len(records) / 2
    for r in records:  # the first ones may have too few points for the joint law: said so
        assert r in joint or any("joint fit with" in note for note in r["notes"])
    alone = forecast_record(run, joint[0]["step"], 160)
    assert any("leaves out the loss drop of the LR decay" in note for note in alone["notes"])
    assert alone["forecast"] != joint[0]["forecast"]
