"""`oneepoch fit`, `compare` and `scaling` through oneepoch.cli.main, on run directories
written by the test (metrics.jsonl + run.json + config.toml per docs/formats.md)."""

import csv
import io
import json
import math

import numpy as np
import pytest

from oneepoch.analysis.runs import load_run
from oneepoch.analysis.synthetic import cosine_lr, power_law, write_run
from oneepoch.cli import main
from oneepoch.errors import UserError


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(capsys, *argv, says):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0].endswith("."), err
    assert says in lines[0]
    assert "Traceback" not in err


@pytest.fixture
def cosine_run(tmp_path):
    total = 2000
    return write_run(
        tmp_path / "cosine",
        power_law(2.0, 400.0, 0.3),
        total_steps=total,
        noise=0.004,
        warmup_steps=50,
        lr=lambda s: cosine_lr(s, 1e-3, 50, total),
    )


def test_fit_json_reports_every_form_with_intervals(capsys, cosine_run, tmp_path):
    png = tmp_path / "fit.png"
    code, out, _ = run_cli(
        capsys,
        "fit",
        cosine_run,
        "--json",
        "--bootstrap",
        60,
        "--predict-at",
        3e7,
        "--target-loss",
        5.0,
        "--plot",
        png,
    )
    assert code == 0
    result = json.loads(out)["runs"][0]
    assert result["x"] == "tokens" and result["min_step"] == 2 * 50  # twice the warm-up
    expected = {
        "power": ("E", "A", "alpha"),
        "schedule": ("L0", "A", "alpha", "C"),
        "power-nofloor": ("A", "alpha"),
        "schedule-nofloor": ("A", "alpha", "C"),
        "power-avgfloor": ("E", "A", "alpha"),
        "schedule-avgfloor": ("L0", "A", "alpha", "C"),
    }
    assert set(result["forms"]) == set(expected)
    for name, names in expected.items():
        form = result["forms"][name]
        assert form["param_names"] == list(names)
        for name in names:
            assert set(form[name]) == {"value", "ci_low", "ci_high", "se"}
        assert {"rmse_log", "r2", "noise_sigma_log"} <= set(form["goodness"])
        assert {"t_min", "t_max", "decades"} <= set(form["valid_range"])
    assert result["tail_check"]["better"] in expected
    assert set(result["predict_at"]["forms"]) == set(expected)
    # 3e7 tokens is past the run's 1.6e7: an extrapolation, decay inside the fitted range,
    # so the schedule forms (the floor averaged, the floor-free), weighed by their backtests;
    # 5.0 lies inside the fitted losses
    forecast = result["predict_at"]["forecast"]
    weights = forecast["weights"]
    assert set(weights) <= {"schedule-avgfloor", "schedule-nofloor"}
    assert sum(weights.values()) == pytest.approx(1.0)
    forms = result["predict_at"]["forms"]
    log_mean = sum(w * math.log(forms[n]["value"]) for n, w in weights.items())
    assert forecast["value"] == pytest.approx(math.exp(log_mean), rel=1e-3)
    assert min(forms[n]["ci_low"] for n in weights) * 0.98 < forecast["ci_low"] < forecast["value"]
    assert result["target"]["forecast"]["form"] == result["tail_check"]["better"]
    assert result["target"]["forecast"]["weights"] == {result["tail_check"]["better"]: 1.0}
    assert result["target"]["forms"]["power"]["tokens"]["value"] > 0
    assert result["throughput"]["tokens_per_s"] == pytest.approx(8192 / 0.05)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fit_text_output_and_steps_axis(capsys, cosine_run):
    code, out, _ = run_cli(
        capsys,
        "fit",
        cosine_run,
        "--x",
        "steps",
        "--forms",
        "power",
        "--bootstrap",
        30,
        "--use-first",
        0.5,
        "--predict-at",
        2000,
    )
    assert code == 0
    assert "t = steps" in out and "alpha" in out and "observed loss" in out


def test_compare_json_names_the_speedups(capsys, tmp_path):
    a = write_run(tmp_path / "a", power_law(2.0, 400.0 * 2.0**0.3, 0.3), total_steps=2000)
    b = write_run(tmp_path / "b", power_law(2.0, 400.0, 0.3), total_steps=2000)
    code, out, _ = run_cli(capsys, "compare", a, b, "--json")
    assert code == 0
    result = json.loads(out)
    # noise-free power laws with E: log-log interpolation is close to, not exactly, 2
    for name in ("wall_clock_speedup", "step_speedup", "token_speedup", "flop_speedup"):
        assert result[name] == pytest.approx(2.0, rel=1e-3)
    code, out, _ = run_cli(capsys, "compare", a, b)
    assert "token_speedup: 2" in out


def test_scaling_sweep_csv_then_fit(capsys, tmp_path):
    runs = []
    rng = np.random.default_rng(0)
    for i, (params, steps) in enumerate([(n, s) for n in (1e6, 3e6, 1e7) for s in (500, 2000)]):
        # final loss from a Chinchilla-like law in (params, tokens), noise 0.5%
        def loss(tokens, st, n=params):
            return 1.8 + 300 / n**0.3 + 200 / tokens**0.3

        runs.append(
            write_run(
                tmp_path / f"r{i}",
                loss,
                total_steps=steps,
                params=int(params),
                epochs=2.0 if i % 2 else 1.0,
                noise=0.005,
                seed=int(rng.integers(1e6)),
            )
        )
    code, out, _ = run_cli(capsys, "scaling", "sweep-csv", *runs, "--loss", "best")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 6 and {"params", "tokens", "unique_tokens", "loss"} <= set(rows[0])
    # two epochs of 2000 x 8192 tokens: unique tokens saturate at half, as of the best eval
    unique = min(float(rows[1]["tokens"]), 2000 * 8192 / 2)
    assert float(rows[1]["unique_tokens"]) == pytest.approx(unique)
    assert float(rows[0]["params"]) == 1e6
    code, out, _ = run_cli(capsys, "scaling", "sweep-csv", runs[0], "--params", "total")
    assert float(list(csv.DictReader(io.StringIO(out)))[0]["params"]) == 1.2e6

    # the six sweep rows plus a denser synthetic grid give the fit enough points
    sweep = tmp_path / "sweep.csv"
    with sweep.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["params", "tokens", "loss"])
        for row in rows:
            writer.writerow([row["params"], row["tokens"], row["loss"]])
        for n in np.geomspace(1e6, 1e8, 6):
            for d in np.geomspace(1e7, 1e10, 6):
                writer.writerow([n, d, 1.8 + 300 / n**0.3 + 200 / d**0.3])
    law = tmp_path / "law.json"
    png = tmp_path / "iso.png"
    code, out, _ = run_cli(
        capsys, "scaling", "fit", "--csv", sweep, "--json", law, "--bootstrap", 40, "--plot", png
    )
    assert code == 0 and "alpha" in out
    result = json.loads(law.read_text())
    for key in ("E", "A", "B", "alpha", "beta"):
        assert set(result[key]) == {"value", "ci_low", "ci_high", "se"}
    for key in ("n_points", "objective", "tokens_per_param", "N_opt_exponent", "D_opt_exponent"):
        assert key in result
    assert result["n_points"] == 42
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_scaling_fit_data_constrained_with_renamed_columns(capsys, tmp_path):
    path = tmp_path / "dc.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["N", "D", "U", "L"])
        for n in np.geomspace(1e7, 1e9, 4):
            for u in (1e8, 1e9):
                for epochs in (1, 4, 16):
                    d = u * epochs
                    writer.writerow([n, d, u, 1.9 + 500 / n**0.35 + 1500 / min(d, 5 * u) ** 0.35])
    code, out, _ = run_cli(
        capsys,
        "scaling",
        "fit",
        "--csv",
        path,
        "--json",
        "-",
        "--form",
        "data-constrained",
        "--params-col",
        "N",
        "--tokens-col",
        "D",
        "--unique-col",
        "U",
        "--loss-col",
        "L",
        "--bootstrap",
        10,
    )
    assert code == 0
    result = json.loads(out)
    assert result["form"] == "data-constrained" and result["procedure"] == "paper"
    assert result["base"]["source"].startswith("the CSV's single-epoch rows")
    assert result["base"]["rows"] == [i + 2 for i in range(24) if i % 3 == 0]  # 1 epoch
    assert {"R_D_star", "R_N_star"} <= set(result)

    # the same with the base law from a file, the terms tied, and an outlier policy
    base = tmp_path / "base.json"
    base.write_text(
        json.dumps(
            {
                k: {"value": v}
                for k, v in (
                    ("E", 1.9),
                    ("A", 500.0),
                    ("B", 1500.0),
                    ("alpha", 0.35),
                    ("beta", 0.35),
                )
            }
            | {"form": "chinchilla"}
        )
    )
    args = ["--params-col", "N", "--tokens-col", "D", "--unique-col", "U", "--loss-col", "L"]
    code, out, _ = run_cli(
        capsys,
        "scaling",
        "fit",
        "--csv",
        path,
        "--json",
        tmp_path / "law.json",
        "--form",
        "data-constrained",
        "--base",
        base,
        "--drop-highest",
        1,
        "--bootstrap",
        10,
        *args,
    )
    assert code == 0
    assert f"Chinchilla terms fixed from {base}" in out
    assert "outliers: drop the 1 highest-loss rows, 1 rows dropped" in out
    assert "(from the base law)" in out
    assert_user_error(
        capsys,
        "scaling",
        "fit",
        "--csv",
        path,
        "--json",
        "-",
        "--form",
        "data-constrained",
        "--base",
        base,
        "--tie",
        "alpha=beta",
        *args,
        says="--tie applies to the base fit",
    )


# --- bad input: one sentence, exit code 2, no traceback --------------------------------


def test_missing_run_directory(capsys, tmp_path):
    assert_user_error(capsys, "fit", tmp_path / "nope", says="does not exist")


def test_empty_metrics_file(capsys, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    assert_user_error(capsys, "fit", tmp_path / "run", says="no metrics lines")


def test_missing_metrics_file(capsys, tmp_path):
    (tmp_path / "run").mkdir()
    assert_user_error(capsys, "compare", tmp_path / "run", tmp_path / "run", says="is missing")


def test_use_first_leaving_no_evaluation(capsys, cosine_run):
    # 1% of the run ends inside the warm-up: nothing is left to fit, for any form
    assert_user_error(capsys, "fit", cosine_run, "--use-first", 0.01, says="has 0 evaluations")


def test_too_few_evaluations(capsys, tmp_path):
    run = write_run(
        tmp_path / "run", power_law(2, 400, 0.3), total_steps=30, eval_steps=np.array([10, 20, 30])
    )
    assert_user_error(capsys, "fit", run, says="needs at least")


def test_corrupt_metrics_line(capsys, tmp_path):
    run = write_run(tmp_path / "run", power_law(2, 400, 0.3), total_steps=100)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines.insert(3, "{not json")
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert_user_error(capsys, "fit", run, says="line 4 is not valid JSON")


def assert_csv_error(capsys, tmp_path, text, says):
    """`scaling fit` on a CSV with this text fails with one sentence containing ``says``."""
    path = tmp_path / "s.csv"
    path.write_text(text)
    out = tmp_path / "o.json"
    assert_user_error(capsys, "scaling", "fit", "--csv", path, "--json", out, says=says)


def test_csv_with_non_positive_value(capsys, tmp_path):
    text = "params,tokens,loss\n1e6,1e8,3.1\n2e6,0,3.0\n"
    assert_csv_error(capsys, tmp_path, text, says="line 3: tokens = 0 must be a positive number")


def test_csv_with_missing_column(capsys, tmp_path):
    assert_csv_error(capsys, tmp_path, "params,tokens\n1e6,1e8\n", says="lacks column(s) loss")


def test_csv_with_non_numeric_cell(capsys, tmp_path):
    text = "params,tokens,loss\n1e6,1e8,abc\n"
    assert_csv_error(capsys, tmp_path, text, says="loss = 'abc' is not a number")


def test_csv_too_short_for_the_form(capsys, tmp_path):
    text = "params,tokens,loss\n1e6,1e8,3.1\n2e6,2e8,3.0\n"
    assert_csv_error(
        capsys,
        tmp_path,
        text,
        says="needs at least 7 rows, the CSV has 2 after dropping outliers; add runs",
    )


def test_binary_csv_is_one_sentence(capsys, tmp_path):
    path = tmp_path / "s.csv"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe" * 20)
    out = tmp_path / "o.json"
    assert_user_error(capsys, "scaling", "fit", "--csv", path, "--json", out, says="not a text CSV")


def test_identical_rows_are_an_error_not_a_law(capsys, tmp_path):
    text = "params,tokens,loss\n" + "1e8,2e9,3.1\n" * 8
    assert_csv_error(capsys, tmp_path, text, says="only 1 distinct (params, tokens) points")


def test_fit_without_bootstrap_prints_no_interval(capsys, tmp_path):
    run = write_run(tmp_path / "run", power_law(2.0, 400.0, 0.3), noise=0.003)
    code, out, _ = run_cli(capsys, "fit", run, "--bootstrap", 0, "--predict-at", "3e7")
    assert code == 0
    assert "inf]" not in out and "[n/a" not in out
    assert "forecast: loss at t = 3e+07: " in out


def test_missing_law_file(tmp_path):
    from oneepoch.analysis import load_law

    with pytest.raises(UserError, match="does not exist"):
        load_law(tmp_path / "law.json")


# --- reading run directories ------------------------------------------------------------


def test_resumed_run_keeps_the_later_line_and_tolerates_a_partial_last_line(tmp_path):
    run = write_run(tmp_path / "run", power_law(2, 400, 0.3), total_steps=300, eval_every=100)
    path = run / "metrics.jsonl"
    text = path.read_text()
    # a resume re-logs step 200 with a different loss, then a line is cut mid-write
    again = {
        "step": 200,
        "tokens": 200 * 8192,
        "unique_tokens": 200 * 8192,
        "epoch": 1.0,
        "lr": 1e-3,
        "train_loss": 3.0,
        "wall_s": 10.0,
        "flops": 1.0,
        "kind": "eval",
        "val_loss": 2.5,
    }
    path.write_text(text + json.dumps(again) + "\n" + '{"step": 301, "tok')
    loaded = load_run(run)
    assert loaded.evals["val_loss"][loaded.evals["step"] == 200] == [2.5]
    assert np.all(np.diff(loaded.lines["step"]) > 0)


def test_sweep_csv_best_loss_comes_with_the_tokens_it_had_seen(capsys, tmp_path):
    """A repeated run that overfits: its best evaluation, early in the run, is the row, with
    the tokens and unique tokens seen by then, not the run's final ones."""

    def overfits(tokens, steps):
        return 3.0 + 1e-6 * (tokens - 4e6) ** 2 / 4e6  # lowest at 4M tokens, rising after

    run = write_run(tmp_path / "r", overfits, total_steps=2000, epochs=8.0, params=100_000)
    code, out, _ = run_cli(capsys, "scaling", "sweep-csv", run, "--loss", "best")
    assert code == 0
    best = list(csv.DictReader(io.StringIO(out)))[0]
    assert float(best["loss"]) == pytest.approx(3.0, abs=1e-2)
    assert float(best["tokens"]) == pytest.approx(4e6, rel=0.05)  # 2000 x 8192 = 16.4M in all
    assert float(best["unique_tokens"]) == pytest.approx(16_384_000 / 8)
    code, out, _ = run_cli(capsys, "scaling", "sweep-csv", run)
    final = list(csv.DictReader(io.StringIO(out)))[0]
    assert float(final["tokens"]) == 16_384_000 and float(final["loss"]) > 3.5
