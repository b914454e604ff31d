"""The job `oneepoch reproduce` plans, before anything trains: rule runs with their rules'
proportions, from the planner itself; runs read from a longer run's first steps; experiment
3's run long enough for its claim. Torch-free arithmetic, no training."""

from __future__ import annotations

import math

import pytest

from oneepoch.plan.budget import Budget
from oneepoch.plan.planner import RATIO_TOLERANCE, Corpus, Planner, Settings, UniformRate
from oneepoch.plan.rules import make_rule
from oneepoch.reproduce.experiments import RunSpec, one_epoch_curves, plan_job, trained
from oneepoch.reproduce.presets import PRESETS
from oneepoch.reproduce.verdicts import WIDE_DECADES, ratio_miss

CORPUS = {"tiny": 5_522_108, "small": 60_000_000}  # the built-in corpus; a 60M-token one


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_every_rule_run_has_its_rule_s_tokens_per_parameter_or_says_why(name):
    preset = PRESETS[name]
    job = plan_job(preset, CORPUS[name], 4096)
    planner = Planner(
        Corpus(CORPUS[name], 4096),
        Settings(preset.seq_len, eval_tokens=preset.eval_tokens, batch_size=preset.batch_size),
        UniformRate(),
    )
    for budget in job["exp4"]:
        for rule_name, r in budget["rules"].items():
            rule = make_rule(rule_name)
            spec = RunSpec(**job["runs"][r["run"]])
            tokens = spec.steps * preset.tokens_per_step
            achieved = tokens / r["params"]["total"]
            assert r["tokens_per_param"] == pytest.approx(achieved)
            assert r["target_tokens_per_param"] == rule.r
            # the run is the planner's: the same shape, its steps to the evaluation cadence
            plan = planner.plan(rule, Budget("flops", budget["flops"], ""))
            assert (spec.n_layer, spec.n_head, spec.d_model) == (
                plan.shape.n_layer,
                plan.shape.n_head,
                plan.shape.d_model,
            )
            assert abs(spec.steps - plan.steps) <= preset.eval_every / 2
            cannot = any(n.startswith("cannot keep") for n in plan.notes)
            if cannot:  # the grid has no such shape: the verdict says what ran
                assert (
                    ratio_miss(r)
                    == f"ran {achieved:.3g} tokens per parameter, the rule asks {rule.r:g}"
                )
            else:
                assert abs(math.log(achieved / rule.r)) <= math.log(RATIO_TOLERANCE), (
                    budget["fraction"],
                    rule_name,
                    achieved,
                )
                assert ratio_miss(r) is None
    kept = [r for b in job["exp4"] for r in b["rules"].values() if ratio_miss(r) is None]
    if name == "small":  # a GPU-sized grid keeps every rule
        assert len(kept) == sum(len(b["rules"]) for b in job["exp4"])
    else:  # only chinchilla at 1/4 of the compute wants a model below the smallest shape
        assert len(kept) == sum(len(b["rules"]) for b in job["exp4"]) - 1
        assert ratio_miss(job["exp4"][0]["rules"]["chinchilla"])


def test_runs_read_from_a_longer_run_agree_with_it_in_everything_but_length():
    preset = PRESETS["tiny"]
    job = plan_job(preset, CORPUS["tiny"], 4096)
    specs = {k: RunSpec(**v) for k, v in job["runs"].items()}
    prefixes = {k: s for k, s in specs.items() if s.prefix_of}
    # experiment 1's one-epoch run and the baseline at 1/4 of the compute are the beginning
    # of experiment 3's long run; a rule's run at 1/4 of another rule's longer run
    assert specs[job["exp2"]["0"]].prefix_of == job["exp3"]["power_law"][0]
    assert specs[job["exp4"][0]["baseline"]].prefix_of == job["exp3"]["power_law"][0]
    assert len(prefixes) == 3
    for spec in prefixes.values():
        longer = specs[spec.prefix_of]
        assert longer.prefix_of is None and longer.steps > spec.steps
        assert longer.setup() == spec.setup()
        assert spec.steps % preset.eval_every == 0  # the longer run evaluates there
    assert set(trained(job)) == set(specs) - set(prefixes)


@pytest.mark.parametrize("name, decades", [("tiny", WIDE_DECADES), ("small", 2.0)])
def test_experiment_3_s_run_spans_the_decades_its_claim_needs(name, decades):
    preset = PRESETS[name]
    job = plan_job(preset, CORPUS[name], 4096)
    (key,) = job["exp3"]["power_law"]
    spec = RunSpec(**job["runs"][key])
    warmup = preset.warmup_steps if spec.warmup_steps is None else spec.warmup_steps
    # the fit starts after twice the warm-up, at the first evaluation past it
    from oneepoch.schedule import Cadence

    cadence = Cadence(spec.steps, preset.eval_every)
    first = min(s for s in range(2 * warmup + 1, spec.steps) if cadence.evaluates(s))
    assert math.log10(spec.steps / first) >= decades


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_the_forecast_claim_covers_every_one_epoch_run_of_the_job(name):
    """Experiment 3 fits and forecasts every one-epoch curve (experiment 4's rule runs and
    baselines too), each once, and no run that repeats its data."""
    job = plan_job(PRESETS[name], CORPUS[name], 4096)
    curves = one_epoch_curves(job)
    assert len(curves) == len(set(curves))
    assert curves[: 1 + len(job["exp2"])] == [*job["exp3"]["power_law"], *job["exp2"].values()]
    rule_runs = {r["run"] for b in job["exp4"] for r in b["rules"].values()}
    one_epoch_rule_runs = {k for k in rule_runs if job["runs"][k]["epochs"] == 1.0}
    assert one_epoch_rule_runs and one_epoch_rule_runs <= set(curves)
    assert {b["baseline"] for b in job["exp4"]} <= set(curves)
    repeated = {x[k] for x in job["exp1"] for k in ("repeated", "regularized")}
    assert not repeated & set(curves)
    assert {k for k, spec in job["runs"].items() if spec["epochs"] == 1.0} == set(curves)
