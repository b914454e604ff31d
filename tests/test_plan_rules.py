"""The planner's arithmetic against hand calculations: budgets, rules, shapes, heuristics,
time estimates. No measurement: a fixed throughput stands in for the calibration."""

from __future__ import annotations

import json
import math

import pytest

from helpers import FixedThroughput
from oneepoch.config import RunConfig, validate
from oneepoch.errors import UserError
from oneepoch.flops import Shape, param_counts, train_flops_per_token
from oneepoch.plan.budget import parse_budget
from oneepoch.plan.calibrate import Rate
from oneepoch.plan.estimate import checkpoint_count, estimate_run, evaluation_steps
from oneepoch.plan.heuristics import batch_size, grad_accum, learning_rate
from oneepoch.plan.rules import (
    MUENNIGHOFF,
    Chinchilla,
    DataConstrained,
    Fitted,
    Kaplan,
    Komatsuzaki,
    RuleContext,
    make_rule,
)
from oneepoch.plan.shapes import (
    ASPECT_MAX,
    ASPECT_MIN,
    FlopsCurve,
    all_candidates,
    head_count,
    make_candidate,
    near_equal,
)


def six_n(unique: float = 1e15) -> RuleContext:
    """C = 6 N D: the accounting the papers' closed forms assume."""
    return RuleContext(lambda n, kind: 6.0 * n, unique)


# -- budgets -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, kind, value",
    [
        ("3e15", "flops", 3e15),
        ("3PFLOPs", "flops", 3e15),
        ("2.5e12 flops", "flops", 2.5e12),
        ("20min", "seconds", 1200),
        ("20m", "seconds", 1200),
        ("8h", "seconds", 28800),
        ("1h30m", "seconds", 5400),
        ("50M tokens", "tokens", 50e6),
        ("2e6tok", "tokens", 2e6),
    ],
)
def test_budget_forms(text, kind, value):
    b = parse_budget(text)
    assert (b.kind, b.value) == (kind, pytest.approx(value))


@pytest.mark.parametrize("text", ["lots", "0", "-5min", "3 parsecs"])
def test_bad_budgets_are_one_sentence(text):
    with pytest.raises(UserError):
        parse_budget(text)


# -- rules, by hand ----------------------------------------------------------------------


def test_komatsuzaki_r_tokens_per_param():
    # C = 6N * 5N  =>  N = sqrt(C / 30)
    a = Komatsuzaki(5).allocate(3e15, six_n())
    assert a.params == pytest.approx(1e7, rel=1e-6)
    assert a.tokens == pytest.approx(5e7, rel=1e-6)
    assert a.count == "total" and not a.data_limited
    b = Komatsuzaki(10).allocate(6e15, six_n())  # C = 60 N^2
    assert b.params == pytest.approx(1e7, rel=1e-6)


def test_komatsuzaki_never_repeats_the_corpus():
    a = Komatsuzaki(5).allocate(3e15, six_n(unique=1e7))
    assert a.data_limited
    assert (a.tokens, a.params, a.max_tokens) == (1e7, 2e6, 1e7)


def test_chinchilla_twenty_tokens_per_param():
    a = Chinchilla().allocate(1.2e15, six_n())  # C = 120 N^2
    assert a.params == pytest.approx(math.sqrt(1e13), rel=1e-6)
    assert a.tokens == pytest.approx(20 * math.sqrt(1e13), rel=1e-6)


def test_kaplan_power_law():
    pf_day = 8.64e19
    a = Kaplan().allocate(pf_day, six_n())
    assert a.count == "non_embedding"
    assert a.params == pytest.approx(1.3e9, rel=1e-9)
    assert a.tokens == pytest.approx(pf_day / (6 * 1.3e9), rel=1e-9)
    b = Kaplan().allocate(pf_day * 10, six_n())
    assert b.params / a.params == pytest.approx(10**0.73, rel=1e-9)


def test_data_constrained_with_plenty_of_data_is_chinchilla_shaped():
    # alpha = beta: N_opt = G sqrt(C/6), D_opt = sqrt(C/6) / G, G = (A/B)^(1/(2 alpha))
    p = MUENNIGHOFF
    g = (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1 / (p["alpha"] + p["beta"]))
    c = 1e20
    a = DataConstrained().allocate(c, six_n(unique=1e15))
    assert a.params == pytest.approx(g * math.sqrt(c / 6), rel=2e-3)
    assert a.tokens == pytest.approx(math.sqrt(c / 6) / g, rel=2e-3)
    assert a.tokens / a.params == pytest.approx(1 / g**2, rel=4e-3)  # ~19.5


def _muennighoff_loss(n: float, d: float, u: float) -> float:
    """Muennighoff et al.'s eq. by hand: effective data and parameters under repetition."""
    p = MUENNIGHOFF
    u_d = min(d, u)
    d_eff = u_d + u_d * p["R_D_star"] * (1 - math.exp(-(d / u_d - 1) / p["R_D_star"]))
    g = (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1 / (p["alpha"] + p["beta"]))
    u_n = min(n, g * (g * u_d) ** (p["beta"] / p["alpha"]))
    n_eff = u_n + u_n * p["R_N_star"] * (1 - math.exp(-(n / u_n - 1) / p["R_N_star"]))
    return p["E"] + p["A"] / n_eff ** p["alpha"] + p["B"] / d_eff ** p["beta"]


def test_data_constrained_repeats_a_short_corpus_and_minimises_the_law():
    c, u = 1e20, 1e9  # the unconstrained optimum wants ~9e11 tokens
    a = DataConstrained().allocate(c, six_n(unique=u))
    epochs = a.tokens / u
    assert 1 < epochs < 60
    best = _muennighoff_loss(a.params, a.tokens, u)
    for f in (0.7, 1.4):  # neighbours on the same compute budget are no better
        n = a.params * f
        assert _muennighoff_loss(n, c / (6 * n), u) >= best - 1e-9


def test_fitted_law_compute_optimum_and_loss(tmp_path):
    law = {"form": "chinchilla"}
    for k, v in {"E": 1.5, "A": 100.0, "B": 100.0, "alpha": 0.3, "beta": 0.3}.items():
        law[k] = {"value": v, "ci_low": v, "ci_high": v, "se": 0.0}
    path = tmp_path / "law.json"
    path.write_text(json.dumps(law))
    rule = make_rule(f"fitted:{path}", fitted_count="non_embedding")
    assert isinstance(rule, Fitted) and rule.count == "non_embedding"
    a = rule.allocate(6e12, six_n())  # A = B, alpha = beta: N = D = sqrt(C/6) = 1e6
    assert a.params == pytest.approx(1e6, rel=2e-3)
    assert a.tokens == pytest.approx(1e6, rel=2e-3)
    loss = rule.predict_loss({"non_embedding": 1e6, "total": 2e6}, 1e6, 1e6)
    assert loss == pytest.approx(1.5 + 2 * 100 / 1e6**0.3, rel=1e-9)


@pytest.mark.parametrize("text", ["{not json", '{"form": "chinchilla", "E": 1}'])
def test_broken_law_file_is_one_sentence(tmp_path, text):
    path = tmp_path / "law.json"
    path.write_text(text)
    with pytest.raises(UserError, match="scaling fit"):
        make_rule(f"fitted:{path}")


def test_unknown_rule():
    with pytest.raises(UserError, match="komatsuzaki"):
        make_rule("biggest")


# -- shapes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "d, heads",
    [(32, 1), (40, 1), (64, 2), (72, 2), (96, 3), (104, 2), (120, 3), (128, 2), (160, 5), (256, 4)],
)
def test_head_size(d, heads):
    assert head_count(d) == heads


def test_the_grid_is_fine_enough_to_keep_a_ratio_at_small_sizes():
    """At a fixed compute a shape's tokens per parameter goes as ~1/N^2 (the output head's
    FLOPs grow with N), so keeping a ratio within 10% needs shapes within ~10% of each
    other in N. Above the few smallest models (d_model 32-56, one layer, where the
    embedding is all there is) the grid has them, for small and large vocabularies."""
    for seq, vocab in ((128, 4096), (256, 4096), (128, 8192), (1024, 50257)):
        counts = sorted({c.total for c in all_candidates(seq, vocab)})
        start = make_candidate(1, 64, seq, vocab).total
        gaps = [b / a for a, b in zip(counts, counts[1:]) if a >= start and b <= 3e7]
        assert max(gaps) <= 1.15, (seq, vocab, max(gaps))
        assert sorted(gaps)[int(0.95 * len(gaps))] <= 1.1


def test_near_equal_shapes_are_sane():
    target = 3e6
    shapes = near_equal(target, "non_embedding", 128, 4096)
    assert len(shapes) > 3
    closeness = [abs(math.log(c.non_embedding / target)) for c in shapes]
    assert closeness == sorted(closeness) and max(closeness) <= math.log(1.15)
    for c in shapes:
        s = c.shape
        assert s.d_model % s.n_head == 0 and 32 <= s.d_model // s.n_head <= 64
        assert ASPECT_MIN <= s.d_model / s.n_layer <= ASPECT_MAX
        assert c.non_embedding == param_counts(s)["non_embedding"]
        assert c.flops_per_token == train_flops_per_token(s)


def test_target_below_the_smallest_model_gets_it():
    assert near_equal(10, "total", 128, 4096)[0].shape == Shape(1, 1, 32, 128, 4096)


def test_flops_curve_is_the_real_flops_function():
    curve = FlopsCurve(128, 4096)
    for n_layer, d in [(2, 128), (4, 256), (12, 768)]:  # ladder points (aspect 64)
        c = make_candidate(n_layer, d, 128, 4096)
        assert curve(c.total, "total") == pytest.approx(c.flops_per_token, rel=1e-9)
        assert curve(c.non_embedding, "non_embedding") == pytest.approx(c.flops_per_token, rel=1e-9)
    # a small model's head dominates: far above 6 N
    small = make_candidate(2, 128, 128, 4096)
    assert curve(small.non_embedding, "non_embedding") > 10 * small.non_embedding
    assert len(all_candidates(128, 4096)) > 1000


# -- heuristics and estimates ------------------------------------------------------------


def test_batch_size_aims_at_a_thousand_steps():
    assert batch_size(5.5e6, 128) == 32  # 43 sequences -> power of two below
    assert batch_size(1e3, 128) == 8
    assert batch_size(1e12, 128) == 512


def test_grad_accum_only_bounds_the_logits_memory():
    assert grad_accum(16, 128, 4096) == 1
    assert grad_accum(512, 128, 4096) == 4  # 512 x 128 x 4096 x 12 bytes = 3.2 GB -> 0.8 GB
    assert grad_accum(8, 2048, 50257) == 8  # one sequence per micro-batch at most


def test_learning_rate_is_kaplans_fit():
    assert learning_rate(1e6) == pytest.approx(0.003239 - 0.0001395 * math.log(1e6))
    assert learning_rate(1.0) == 0.003  # clipped
    assert learning_rate(1e30) == 1e-4


def test_evaluation_and_checkpoint_counts_follow_the_trainer():
    # log-spaced 1,2,3,4,6,10,16,25,40,63,100 plus every 5th step: 7 + 20
    assert evaluation_steps(100) == 27
    assert checkpoint_count(100) == 10
    assert checkpoint_count(95) == 11  # every 9th, plus the final step


def test_estimate_adds_evaluation_checkpoints_and_startup():
    shape = Shape(2, 2, 128, 128, 4096)
    rate = Rate(
        step_s=0.5, tokens_per_s=4096, eval_tokens_per_s=12288, checkpoint_s=0.1, source="x"
    )
    est = estimate_run(shape.seq_len, 16, 100, rate, val_windows=96, data_bytes=0)
    assert est.train_s == 50.0
    assert est.eval_s == pytest.approx(27 * 96 * 128 / 12288)
    assert est.checkpoint_s == pytest.approx(1.0)
    assert est.elapsed_s == pytest.approx(est.startup_s + 0.5 + 50 + est.eval_s + 1.0)


# -- the planner with a fixed throughput -------------------------------------------------


def _planner(train_tokens=50_000_000, vocab=4096):
    from oneepoch.plan.planner import Corpus, Planner, Settings

    corpus = Corpus(train_tokens, vocab, val_tokens=1_000_000, path="data")
    return Planner(corpus, Settings(seq_len=128), FixedThroughput())


@pytest.mark.parametrize("rule", ["komatsuzaki", "chinchilla", "kaplan", "data-constrained"])
def test_plans_spend_the_budget(rule):
    planner = _planner()
    r = make_rule(rule)
    flops = planner.plan(r, parse_budget("2e14"))
    assert not flops.problem
    step_flops = flops.batch_size * 128 * flops.candidate.flops_per_token
    assert 2e14 - step_flops <= flops.flops <= 2e14
    time = planner.plan(r, parse_budget("10min"))
    assert 0.97 * 600 <= time.estimate.elapsed_s <= 600
    tokens = planner.plan(r, parse_budget("3M tokens"))
    assert 3e6 - tokens.batch_size * 128 <= tokens.tokens <= 3e6


def test_plan_config_is_a_valid_training_config():
    from oneepoch.plan.planfile import config_of_plan
    from oneepoch.plan.planner import Settings

    planner = _planner(train_tokens=2_000_000)
    plan = planner.plan(make_rule("chinchilla"), parse_budget("1e14"))
    assert plan.epochs > 1  # wants more than 2M tokens: repeats
    cfg = config_of_plan(plan, planner.corpus, Settings(seq_len=128), planner.calib)
    again = RunConfig.from_dict(cfg.to_dict())
    validate(again)
    assert again.train.tokens == plan.tokens and again.data.epochs == plan.epochs
    # the repeated sampler's pool fits the corpus: ceil(samples / epochs) <= windows
    samples = plan.tokens // 128
    assert math.ceil(samples / plan.epochs) <= (2_000_000 - 1) // 128


def test_impossible_plans_say_why():
    planner = _planner()
    tiny = planner.plan(make_rule("komatsuzaki"), parse_budget("1e9"))
    assert "smallest model" in tiny.problem
    short = _planner(train_tokens=20_000)
    absurd = short.plan(make_rule("data-constrained"), parse_budget("1e16"))
    assert "repeat" in absurd.problem
