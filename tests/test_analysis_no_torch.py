"""The analysis package and its commands work where torch is not installed."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["torch"] = None  # any `import torch` now raises ImportError

    import csv, json
    from pathlib import Path

    import oneepoch.analysis
    from oneepoch.analysis import fit_run, load_run
    from oneepoch.analysis.synthetic import cosine_lr, power_law, write_run
    from oneepoch.cli import main
    import oneepoch.reproduce.report  # the job's folder, results and report: read, not trained

    try:
        import torch  # noqa: F401
        raise SystemExit("torch was importable")
    except ImportError:
        pass

    out = Path(sys.argv[1])
    a = write_run(out / "a", power_law(2.0, 400.0, 0.3), noise=0.004, total_steps=1500,
                  lr=lambda s: cosine_lr(s, 1e-3, 50, 1500), warmup_steps=50)
    b = write_run(out / "b", power_law(2.0, 300.0, 0.3), noise=0.004, total_steps=1500)
    assert fit_run(load_run(a), n_boot=20).fits["power"].params()["alpha"]["value"] > 0
    from oneepoch.live_forecast import forecast_record  # the live forecast's worker
    assert forecast_record(a, 600, 1500, target_loss=2.5, n_boot=20)["forecast"] > 2.0

    with (out / "s.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["params", "tokens", "loss"])
        for n in (1e6, 1e7, 1e8):
            for d in (1e8, 1e9, 1e10):
                w.writerow([n, d, 1.8 + 400 / n**0.34 + 400 / d**0.28])

    commands = [
        ["fit", str(a), "--json", "--bootstrap", "20", "--plot", str(out / "f.png")],
        ["compare", str(a), str(b), "--json"],
        ["scaling", "fit", "--csv", str(out / "s.csv"), "--json", str(out / "law.json"),
         "--bootstrap", "20"],
    ]
    for argv in commands:
        code = main(argv)
        assert code == 0, (argv, code)
    assert json.loads((out / "law.json").read_text())["n_points"] == 9

    # the data-constrained law, what more data is worth, and the sweep's design check
    from oneepoch.analysis.design_check import r_d_identification
    from oneepoch.analysis.scaling import load_law
    from oneepoch.analysis.synthetic import draw_repetition_law, repetition_rows
    from oneepoch.analysis.value_of_data import epochs_affordable, value_of_data

    spec = draw_repetition_law(2)
    rows = repetition_rows(spec["law"], "wide", 0.005, 0)
    with (out / "dc.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["params", "tokens", "unique_tokens", "loss"])
        w.writerows(zip(rows["N"], rows["D"], rows["U"], rows["L"]))
    argv = ["scaling", "fit", "--csv", str(out / "dc.csv"), "--form", "data-constrained",
            "--json", str(out / "dc.json"), "--bootstrap", "10"]
    assert main(argv) == 0
    law = load_law(out / "dc.json")
    assert law.replicates.shape == (10, 7)
    ref = {"params": 1e8, "tokens": 4e9, "unique_tokens": 1e9, "flops": 2.4e18}
    table = value_of_data(law, 2.4e18, 1e9, lambda n: 6.0 * n, 1e7, ref)
    assert len(table["rows"]) == 5
    assert epochs_affordable(law, 1e8, 1e9)["penalties"][0]["epochs"]["value"] > 1
    assert len(r_d_identification(rows["N"][:60], rows["D"][:60], rows["U"][:60])) == 3
    from oneepoch.reproduce import law_prediction  # reproduce --law's predictions

    assert law_prediction.predict({"plan": {"exp4": []}}) is None
    assert sys.modules["torch"] is None
    print("ok")
    """
)


def test_analysis_runs_without_torch(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")
