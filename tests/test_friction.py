"""Issue 15, the first hour with one's own corpus: plans that keep their rule's proportion,
`plan --check` that finds the plan, paths that do not depend on where one stands, a
calibration lighter than the run it plans, and the smaller frictions (final.train_loss, the
epoch in the progress line, `fit --predict-at final`, a floor at its bound, a checkpoint
just before the final one)."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys

import pytest

import helpers
from helpers import SRC, TINY, FixedThroughput
from oneepoch.cli import main
from oneepoch.plan.budget import parse_budget
from oneepoch.plan.rules import make_rule
from oneepoch.plan.shapes import all_candidates
from oneepoch.schedule import Cadence


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _planner(calib=None, train_tokens=200_000_000, vocab=4096):
    from oneepoch.plan.planner import Corpus, Planner, Settings

    corpus = Corpus(train_tokens, vocab, val_tokens=1_000_000, path="data")
    return Planner(corpus, Settings(seq_len=128), calib or FixedThroughput())


# -- 1. plans keep their rule's proportion -------------------------------------------------


def _best_possible(planner, rule, plan, budget):
    """The smallest miss |log(ratio / r)| of any shape up to 10x the rule's N."""
    from oneepoch.plan.heuristics import batch_size
    from oneepoch.plan.rules import Allocation

    alloc = Allocation(plan.target_params, "total", rule.r * plan.target_params)
    alloc.max_tokens = planner.ctx.unique_tokens if rule.name == "komatsuzaki" else None
    best, smallest = math.inf, min(c.total for c in all_candidates(planner.T, planner.V))
    for c in all_candidates(planner.T, planner.V):
        if not c.total <= max(plan.target_params, smallest) * 10:  # every smaller one too
            continue
        tokens, batch = planner._tokens_on(c, rule, alloc, plan.budget_flops, budget)
        b = batch or batch_size(tokens, planner.T)
        planned = int(tokens // (b * planner.T)) * b * planner.T
        best = min(best, abs(math.log(max(planned, 1) / c.total / rule.r)))
    return best


@pytest.mark.parametrize("rule_name", ["komatsuzaki", "chinchilla"])
@pytest.mark.parametrize(
    "budget_text, flops_per_s",
    [("3min", 3e9), ("3min", 3e10), ("20min", 1e10), ("3e14", 1e10), ("20M tokens", 1e10)],
)
def test_ratio_rules_keep_their_tokens_per_parameter(rule_name, budget_text, flops_per_s):
    planner = _planner(FixedThroughput(flops_per_s))
    rule, budget = make_rule(rule_name), parse_budget(budget_text)
    plan = planner.plan(rule, budget)
    assert not plan.problem, plan.problem
    ratio = plan.tokens / plan.candidate.total
    assert plan.tokens_per_param == pytest.approx(ratio)
    assert plan.to_json()["tokens_per_param"] == pytest.approx(ratio)
    assert plan.to_json()["target_tokens_per_param"] == rule.r
    miss = abs(math.log(ratio / rule.r))
    possible = _best_possible(planner, rule, plan, budget)
    said = [n for n in plan.notes if n.startswith("cannot keep")]
    if possible <= math.log(1.1):
        assert miss <= math.log(1.1) + 1e-9, (ratio, plan.candidate.label())
        assert not said
    else:  # the nearest the shapes allow, and one line says why
        assert miss == pytest.approx(possible, abs=1e-6)
        assert len(said) == 1 and f"{rule.r:g} tokens per parameter" in said[0]
    if budget.kind == "seconds":  # and the run still fills the time
        assert 0.95 * budget.value <= plan.estimate.elapsed_s <= budget.value


def test_a_rule_that_cannot_be_kept_says_why_in_one_line():
    # vocab 4096, a small budget: d_model sets most of the count, shapes jump 2x apart
    planner = _planner(FixedThroughput(3e9))
    plan = planner.plan(make_rule("chinchilla"), parse_budget("3min"))
    note = next((n for n in plan.notes if n.startswith("cannot keep")), None)
    if note is None:  # the shapes happen to allow it at this speed
        assert abs(math.log(plan.tokens_per_param / 20)) <= math.log(1.1)
    else:
        assert "\n" not in note and "parameters" in note and "is used" in note


def test_plan_table_shows_the_achieved_tokens_per_parameter():
    from oneepoch.commands.plan import print_plans

    planner = _planner()
    budget = parse_budget("3e14")
    rules = [make_rule(n) for n in ("komatsuzaki", "chinchilla", "kaplan")]
    plans = {r.name: planner.plan(r, budget) for r in rules}
    out = io.StringIO()
    print_plans(plans, "komatsuzaki", budget, planner.corpus, planner, None, out=out)
    row = next(line for line in out.getvalue().splitlines() if line.startswith("tokens per"))
    cells = row.split()[3:]
    assert float(cells[0]) == pytest.approx(plans["komatsuzaki"].tokens_per_param, rel=1e-2)
    assert float(cells[1]) == pytest.approx(plans["chinchilla"].tokens_per_param, rel=1e-2)
    assert "(n-e)" in row  # kaplan's N is non-embedding


# -- 3. plan --check finds the plan; seconds for short runs --------------------------------


def test_check_shows_seconds_for_short_runs():
    from oneepoch.commands.plan import check_seconds

    assert check_seconds(156.0) == "156.0 s" and check_seconds(150.04) == "150.0 s"
    assert check_seconds(1800) == "30.0 min"


def test_record_plan_copies_the_sidecar_only_into_its_own_run(tmp_path):
    from oneepoch.commands.train import record_plan

    (tmp_path / "plan.toml").write_text("")
    (tmp_path / "plan.json").write_text(json.dumps({"format": "oneepoch-plan"}))
    record_plan(str(tmp_path / "plan.toml"), str(tmp_path / "new"))
    assert json.loads((tmp_path / "new" / "plan.json").read_text())["format"] == "oneepoch-plan"
    other = tmp_path / "other"  # a finished run elsewhere: train refuses it, so do we
    other.mkdir()
    (other / "config.toml").write_text("")
    record_plan(str(tmp_path / "plan.toml"), str(other))
    assert not (other / "plan.json").exists()
    record_plan(str(tmp_path / "plan.toml"), str(other), resume=True)
    assert (other / "plan.json").exists()
    (tmp_path / "x.toml").write_text("")  # a config without a plan: nothing
    record_plan(str(tmp_path / "x.toml"), str(tmp_path / "plain"))
    assert not (tmp_path / "plain").exists()


# -- 4. paths relative to the file that names them -----------------------------------------


def test_config_paths_resolve_against_the_file(tmp_path):
    from oneepoch.config import absolute_path, load_config_file

    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "a.toml").write_text('[data]\npath = "../data/x"\n')
    assert load_config_file(conf / "a.toml")["data"]["path"] == str(tmp_path / "data" / "x")
    (conf / "b.toml").write_text('[data]\npath = "/abs/x"\n[train]\nsteps = 3\n')
    raw = load_config_file(conf / "b.toml")
    assert raw["data"]["path"] == "/abs/x" and raw["train"]["steps"] == 3
    assert absolute_path("") == "" and absolute_path("d", "/base") == "/base/d"


def test_train_and_resume_from_other_folders(tmp_path, byte_dataset, monkeypatch):
    project = tmp_path / "project"
    (project / "conf").mkdir(parents=True)
    rel = os.path.relpath(byte_dataset, project / "conf")
    (project / "conf" / "run.toml").write_text(
        f'[data]\npath = "{rel}"\n[train]\nsteps = 12\nbatch_size = 8\n'
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code = main(["train", "--config", "../project/conf/run.toml", "--out", "runs/a",
                 "--until-step", "6", *TINY])  # fmt: skip
    assert code == 0
    run = elsewhere / "runs" / "a"
    saved = (run / "config.toml").read_text()
    assert f'path = "{byte_dataset}"' in saved  # recorded absolute
    third = tmp_path / "third"
    third.mkdir()
    monkeypatch.chdir(third)
    assert main(["train", "--out", str(run), "--resume", "--quiet"]) == 0
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and info["final"]["step"] == 12


# -- 5. calibration takes less memory than the run it plans --------------------------------

# Runs argv and prints the peak RSS (KiB) of the largest process under it: getrusage's
# RUSAGE_CHILDREN, from this small launcher, so neither pytest's RSS (which Linux carries
# across exec into a forked child's own ru_maxrss) nor this launcher's counts. A process
# under it counts once it has been waited for: the planner waits for its forkserver, which
# waits for each measuring process.
PEAK = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[1:]).returncode
print("MAXRSS", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(code)
"""


def _peak_kib(*argv, cache) -> int:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "ONEEPOCH_CACHE": cache}
    cmd = [sys.executable, "-c", PEAK, sys.executable, "-m", "oneepoch", *map(str, argv)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.split("MAXRSS")[-1].split()[0])


@helpers.slow("~30 s or more on a 2-core CPU; CI stays within its time")
def test_calibration_peak_memory_stays_below_the_planned_run(tmp_path, byte_dataset):
    """`plan` calibrating from an empty cache, every shape measured (in a fresh process
    each), peaks lower than `train --config plan.toml` of the plan it makes: both
    in subprocesses, on this machine, in the same test."""
    cache = str(tmp_path / "cache")
    common = ["--data", byte_dataset, "--dtype", "float32", "--seq-len", 256,
              "--eval-tokens", 8192]  # fmt: skip
    plan = tmp_path / "plan.toml"
    # the matmul peak (the estimates before anything is measured, and the run's MFU) is
    # measured once a machine, by whichever comes first: not part of what either costs
    _peak_kib("plan", "--budget", "1e12", *common, "--no-calibrate", cache=cache)
    calibration = _peak_kib(
        "plan", "--budget", "1e12", *common, "--recalibrate", "--calibration-seconds", 0.3,
        "--out", plan, cache=cache,
    )  # fmt: skip
    measured = json.loads((tmp_path / "cache" / "throughput.json").read_text())["machines"]
    assert sum(len(points) for points in measured.values()) >= 2  # it did measure shapes
    run = _peak_kib(
        "train", "--data", byte_dataset, "--config", plan, "--steps", 20, "--out",
        tmp_path / "run", "--quiet", cache=cache,
    )  # fmt: skip
    assert calibration < run, (calibration, run)


def test_planner_bounds_calibration_by_the_chosen_runs_micro_batch():
    from oneepoch.flops import activation_bytes
    from oneepoch.plan.calibrate import Calibration
    from oneepoch.plan.heuristics import grad_accum

    class Recording(FixedThroughput):
        allow_measure = True

        def __init__(self):
            super().__init__(1e10)
            self.measured, self.seen = set(), []

        def has(self, shape, batch):
            return (shape, batch) in self.measured

        sequences_within = Calibration.sequences_within

        def measure(self, shape, batch):
            self.measured.add((shape, batch))
            self.seen.append((shape, self.sequences_within(shape)))
            return self.rate(shape, batch)

    calib = Recording()
    planner = _planner(calib)
    rules = [make_rule(n) for n in ("komatsuzaki", "chinchilla", "kaplan")]
    plans = planner.plan_all(rules, parse_budget("3e14"), "chinchilla")
    chosen = plans["chinchilla"]  # komatsuzaki's model is larger
    micro = chosen.batch_size // grad_accum(chosen.batch_size, 128, 4096)
    run_bytes = activation_bytes(chosen.shape, micro)
    assert calib.max_activation_bytes == run_bytes
    # every shape is timed on no more sequences than fit the planned run's activations, and
    # the run's own shape on its whole micro-batch; larger models on fewer sequences
    assert calib.seen and all(n is not None for _, n in calib.seen)
    assert all(activation_bytes(shape, n) <= run_bytes for shape, n in calib.seen if n > 1)
    assert calib.sequences_within(chosen.shape) == micro
    bigger = [n for shape, n in calib.seen if activation_bytes(shape, 1) > run_bytes / micro]
    assert bigger and all(n < micro for n in bigger)


# -- 7. the smaller things -----------------------------------------------------------------


def test_no_checkpoint_a_few_steps_before_the_final_one():
    c = Cadence(1523)
    assert c.checkpoint_every == 152
    written = [s for s in range(1, 1524) if c.checkpoints(s, final=s == 1523)]
    assert 1520 not in written and written[-2:] == [1368, 1523]
    assert c.checkpoint_count() == len(written)
    small = Cadence(150, checkpoint_every=5)  # a gap of a whole interval is kept
    assert [s for s in range(1, 151) if small.checkpoints(s, s == 150)] == list(range(5, 151, 5))
    assert Cadence(None).checkpoints(500)  # a wall-clock run does not know its final step


def test_progress_line_shows_the_epoch_of_a_multi_epoch_run():
    from oneepoch.progress import Progress

    stream = io.StringIO()
    p = Progress(stream=stream)
    p.update(10, 20, 3.5, 1000.0, 5.0, None, force=True, epoch=2.5)
    p.update(20, 20, 3.4, 1000.0, 0.0, None, force=True)
    first, second = stream.getvalue().splitlines()
    assert "step 10/20 epoch 2.50 " in first and "epoch" not in second


def test_run_json_final_train_loss_and_epoch_in_progress(tmp_path, byte_dataset, capsys):
    from oneepoch.config import RunConfig
    from oneepoch.train import train

    cfg = RunConfig()
    cfg.data.path, cfg.data.epochs = str(byte_dataset), 3.0
    cfg.model.n_layer, cfg.model.n_head, cfg.model.d_model, cfg.model.seq_len = 1, 1, 32, 32
    cfg.train.steps, cfg.train.batch_size, cfg.train.eval_tokens = 12, 8, 512
    cfg.train.dtype = "float32"
    info = train(cfg, tmp_path / "run")
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert info["final"]["train_loss"] == lines[-1]["train_loss"]
    err = capsys.readouterr().err
    assert f"epoch {lines[-1]['epoch']:.2f}" in err


@pytest.fixture
def synthetic_run(tmp_path):
    from oneepoch.analysis.synthetic import power_law, write_run

    return write_run(
        tmp_path / "run", power_law(2.0, 400.0, 0.3), total_steps=1000, eval_every=25, noise=0.002
    )


def test_fit_predict_at_final_gives_the_error_against_the_observed_loss(capsys, synthetic_run):
    code, out, err = run_cli(
        capsys, "fit", synthetic_run, "--use-first", "0.4", "--predict-at", "final",
        "--bootstrap", 0, "--forms", "power", "--json",
    )  # fmt: skip
    assert code == 0, err
    pa = json.loads(out)["runs"][0]["predict_at"]
    assert pa["x"] == 1000 * 8192  # the run's final tokens
    assert pa["observed_loss"] is not None
    assert pa["forecast"]["error"] == pytest.approx(
        pa["forecast"]["value"] / pa["observed_loss"] - 1
    )
    code, out, err = run_cli(
        capsys, "fit", synthetic_run, "--use-first", "0.4", "--predict-at", "FINAL",
        "--bootstrap", 0, "--forms", "power",
    )  # fmt: skip
    assert code == 0, err
    assert "observed loss at t = 8.192e+06" in out and "(forecast error " in out


def test_a_floor_at_its_bound_is_said_to_be_unidentified():
    from oneepoch.analysis.format import format_param as _fmt_param
    from oneepoch.commands.fit import AT_BOUND, _annotate

    est = {"value": 8.3e-07, "ci_low": None, "ci_high": None, "se": None}
    ok = {"value": 1.9, "ci_low": None, "ci_high": None, "se": None}
    r = _annotate({"forms": {"schedule": {"L0": est, "A": dict(ok)}, "power": {"E": dict(ok)}}})
    assert r["forms"]["schedule"]["L0"]["note"] == AT_BOUND
    assert "note" not in r["forms"]["power"]["E"]
    assert "(at bound: not identified)" in _fmt_param("L0", est)


def test_sample_help_describes_the_command_and_states_every_default():
    import helpers

    res = helpers.run_cli("sample", "--help")
    assert res.returncode == 0
    text = " ".join(res.stdout.split())
    assert "end-of-text token" in text.split("positional arguments")[0]  # a description
    for flag, default in [
        ("--max-new-tokens", "100"),
        ("--temperature", "0.8"),
        ("--top-k", "50"),
        ("--seed", "0"),
    ]:
        after = text.split(f"{flag} {flag.strip('-').upper().replace('-', '_')}")[-1]
        assert f"(default {default})" in after.split("--")[0], flag
