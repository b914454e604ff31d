"""The planner's arithmetic, the run directory and the shared CLI pieces work without torch.

Only measuring throughput (plan.calibrate.Calibration, oneepoch.measure) needs torch;
a fixed throughput stands in for it here.
"""

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

    import json
    from pathlib import Path

    from oneepoch import cliflags, rundir
    from oneepoch.config import RunConfig
    from oneepoch.plan.budget import parse_budget
    from oneepoch.plan.calibrate import point_key
    from oneepoch.plan.estimate import checkpoint_count, estimate_run, evaluation_steps
    from oneepoch.plan.planfile import config_of_plan, write_plan
    from oneepoch.plan.planner import Corpus, Planner, Settings
    from oneepoch.plan.rules import PUBLISHED, make_rule
    from oneepoch.schedule import Cadence, lr_at
    from helpers import FixedThroughput  # tests/helpers.py: numpy and oneepoch only

    out = Path(sys.argv[1])
    corpus = Corpus(50_000_000, 4096, val_tokens=1_000_000, path="data")
    settings = Settings()
    assert (settings.seq_len, settings.eval_tokens) == (128, 32768)  # the trainer's defaults
    planner = Planner(corpus, settings, FixedThroughput())
    rules = [make_rule(s) for s in PUBLISHED]
    for text in ("2e14", "10min", "3M tokens"):
        plans = planner.plan_all(rules, parse_budget(text), "komatsuzaki")
        assert all(not p.problem for p in plans.values()), text
    chosen = plans["komatsuzaki"]
    cfg = config_of_plan(chosen, corpus, settings, planner.calib)
    assert cfg.train.tokens == chosen.tokens and cfg.model.seq_len == 128
    write_plan(out / "plan.toml", plans, "komatsuzaki", parse_budget("3M tokens"), corpus,
               settings, planner.calib)
    assert json.loads((out / "plan.json").read_text())["prediction"]["tokens"] == chosen.tokens
    assert evaluation_steps(100) == Cadence(100).evaluations() == 27
    assert checkpoint_count(95) == 11
    est = estimate_run(128, 16, 100, planner.calib.rate(chosen.shape, 16), 256)
    assert est.evaluations == 27 and est.elapsed_s > est.train_s > 0
    assert 0 < lr_at(RunConfig().optim, 50, 100) < RunConfig().optim.lr
    assert point_key(chosen.shape, 16).endswith("-B16")

    log = rundir.MetricsLog(out / "metrics.jsonl")
    log.write({"step": 1, "train_loss": float("nan")})
    log.close()
    assert json.loads((out / "metrics.jsonl").read_text())["train_loss"] is None
    rundir.write_json(out / "run.json", {"status": "completed"})
    assert rundir.read_json(out / "run.json") == {"status": "completed"}
    assert "(default 128)" in cliflags.flag_help("--seq-len")

    # the value of more data beside a plan, under a data-constrained law file
    from oneepoch.plan.value import print_value_of_data, value_of_data_for_plan

    law = {"form": "data-constrained"}
    for k, v in {"E": 3.0, "A": 300.0, "B": 900.0, "alpha": 0.35, "beta": 0.35,
                 "R_D_star": 15.0, "R_N_star": 5.0}.items():
        law[k] = {"value": v}
    (out / "dc.json").write_text(json.dumps(law))
    fitted = make_rule(f"fitted:{out / 'dc.json'}")
    table = value_of_data_for_plan(fitted, chosen, planner)
    assert table["rule"] == "komatsuzaki" and len(table["rows"]) == 5
    print_value_of_data(table, "dc.json")

    from oneepoch.cli import build_parser
    build_parser()  # every command registers without torch
    assert sys.modules["torch"] is None
    print("ok")
    """
)


def test_planner_arithmetic_and_run_directory_without_torch(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(SRC), str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]
        ),
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
