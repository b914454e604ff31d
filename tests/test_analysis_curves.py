"""Learning-curve fits: parameter recovery, interval coverage, the LR areas, extrapolation."""

import json

import numpy as np
import pytest

from helpers import load_benchmark
from oneepoch.analysis.curves import (
    MIN_DECAY_TO_FIT_C,
    MIN_SHARE_OF_FALL_TO_FIT_C,
    PowerForm,
    ScheduleForm,
    fit_curve,
)
from oneepoch.analysis.lr_schedule import LRSchedule
from oneepoch.analysis.runfit import fit_run
from oneepoch.analysis.runs import load_run
from oneepoch.analysis.synthetic import cosine_lr, power_law, write_run

E, A, ALPHA = 2.0, 400.0, 0.3
T = np.geomspace(1e5, 1e8, 30)
NOISE = 0.005  # 0.5% multiplicative noise, typical of a fixed validation set


def _power_truth(t):
    return E + A * t**-ALPHA


def _noisy_power(seed):
    rng = np.random.default_rng(seed)
    return rng, _power_truth(T) * np.exp(rng.normal(0.0, NOISE, T.size))


def test_power_law_parameters_recovered_within_intervals():
    rng, y = _noisy_power(seed=7)
    fit = fit_curve(PowerForm(np.exp(np.log(T).mean())), T, y, n_boot=200, rng=rng)
    params = fit.params()
    for name, truth in (("E", E), ("A", A), ("alpha", ALPHA)):
        est = params[name]
        assert est["ci_low"] <= truth <= est["ci_high"], (name, est)
        assert est["ci_low"] < est["value"] < est["ci_high"]
        assert est["se"] > 0
    assert abs(params["alpha"]["value"] - ALPHA) < 0.02
    goodness = fit.goodness()
    assert goodness["rmse_log"] == pytest.approx(NOISE, rel=0.35)
    assert goodness["noise_sigma_log"] == pytest.approx(NOISE, rel=0.5)
    assert fit.valid_range()["n_points"] == T.size


def test_power_law_intervals_cover_truth_about_90_percent():
    """Nominal 90% intervals over 150 independent noisy curves.

    With 150 trials a true 90% coverage lands in [0.80, 0.97] with overwhelming
    probability; intervals 40% as wide (what an overconfident method reports) cover
    ~50% of the time, so the same check must reject them.
    """
    form = PowerForm(np.exp(np.log(T).mean()))
    truth = {"E": E, "A": A, "alpha": ALPHA}
    hits = {k: [] for k in truth}
    narrow_hits = {k: [] for k in truth}
    for seed in range(150):
        rng, y = _noisy_power(seed)
        params = fit_curve(form, T, y, n_boot=150, rng=rng).params()
        for name, true in truth.items():
            v, lo, hi = (params[name][k] for k in ("value", "ci_low", "ci_high"))
            hits[name].append(lo <= true <= hi)
            narrow_hits[name].append(v - 0.4 * (v - lo) <= true <= v + 0.4 * (hi - v))
    for name in truth:
        coverage, narrow = np.mean(hits[name]), np.mean(narrow_hits[name])
        assert 0.80 <= coverage <= 0.97, (name, coverage)
        assert not 0.80 <= narrow <= 0.97, (name, narrow)


def test_fit_resists_a_spike():
    rng, y = _noisy_power(seed=3)
    y = y.copy()
    y[12] *= 1.3  # a loss spike at one evaluation
    fit = fit_curve(PowerForm(np.exp(np.log(T).mean())), T, y, n_boot=100, rng=rng)
    alpha = fit.params()["alpha"]
    assert alpha["ci_low"] <= ALPHA <= alpha["ci_high"]


def _brute_force_areas(eta, lam):
    """S1, S2 straight from the double sum, warmup drops excluded."""
    peak = int(np.argmax(eta))
    s1, s2 = np.cumsum(eta), []
    for i in range(len(eta)):
        total = 0.0
        for j in range(i + 1):
            total += sum(
                (eta[k - 1] - eta[k]) * lam ** (j - k) for k in range(max(peak + 1, 1), j + 1)
            )
        s2.append(total)
    return s1, np.array(s2)


def test_lr_areas_match_the_double_sum():
    steps = np.arange(1, 61)
    lr = cosine_lr(steps, 3e-4, warmup=10, total=60)
    lam = 0.95
    sched = LRSchedule(steps, lr, decay=lam)
    s1, s2 = sched.areas(steps)
    want1, want2 = _brute_force_areas(lr / lr.max(), lam)
    np.testing.assert_allclose(s1, want1, rtol=1e-12)
    np.testing.assert_allclose(s2, want2, rtol=1e-10, atol=1e-14)


def test_lr_logged_every_few_steps_is_interpolated():
    steps = np.arange(1, 1001)
    linear = 1e-3 * (1 - 0.9 * (steps - 1) / 999)  # exactly linear: interpolation is exact
    every = LRSchedule(steps, linear)
    sparse = LRSchedule(np.r_[steps[::10], 1000], np.r_[linear[::10], linear[-1]])
    np.testing.assert_allclose(sparse.areas(steps)[0], every.areas(steps)[0], rtol=1e-12)
    np.testing.assert_allclose(sparse.areas(steps)[1], every.areas(steps)[1], rtol=1e-9)


def test_lr_held_at_last_value_beyond_the_log():
    steps = np.arange(1, 201)
    lr = cosine_lr(steps, 1e-3, warmup=20, total=200)
    longer = np.arange(1, 401)
    extended = LRSchedule(longer, np.r_[lr, np.full(200, lr[-1])])
    s1, s2 = LRSchedule(steps, lr).areas([250.0, 400.0])
    w1, w2 = extended.areas([250.0, 400.0])
    np.testing.assert_allclose(s1, w1, rtol=1e-12)
    np.testing.assert_allclose(s2, w2, rtol=1e-9)


def _schedule_run(path, noise=0.003, seed=1):
    """A cosine-schedule run whose loss follows the schedule-aware law exactly."""
    total = 3000
    steps = np.arange(1, total + 1)
    lr = cosine_lr(steps, 1e-3, 100, total)
    sched = LRSchedule(steps, lr)
    truth = {"L0": 2.0, "A": 8.0, "alpha": 0.4, "C": 2e-4}

    def loss(tokens, st):
        s1, s2 = sched.areas(st)
        return truth["L0"] + truth["A"] * s1 ** -truth["alpha"] - truth["C"] * s2

    write_run(
        path,
        loss,
        total_steps=total,
        eval_every=50,
        warmup_steps=100,
        noise=noise,
        seed=seed,
        lr=lambda s: cosine_lr(s, 1e-3, 100, total),
    )
    return truth


def test_schedule_form_recovers_law_and_wins_on_the_tail(tmp_path):
    truth = _schedule_run(tmp_path / "run")
    rf = fit_run(load_run(tmp_path / "run"), x="steps", n_boot=150)
    params = rf.fits["schedule"].params()
    for name, value in truth.items():
        assert params[name]["ci_low"] <= value <= params[name]["ci_high"], (name, params[name])
    # on held-out tail points the true form is as good as the noise (0.3%) allows and far
    # better than the plain power law, which cannot bend with the cosine decay
    rmse = rf.tail_check["rmse_log"]
    assert rmse["schedule"] < 1.5 * 0.003 and rmse["schedule"] < 0.5 * rmse["power"]
    # the correct form holds over the whole fitted range; the plain power law does not
    assert rf.fits["schedule"].valid_range()["n_points"] == rf.settings["n_fit_points"]
    assert rf.fits["power"].valid_range()["n_points"] < rf.settings["n_fit_points"]


@pytest.mark.parametrize("min_ratio", [0.1, 0.0, 0.5])
def test_c_is_fitted_once_two_thirds_of_the_planned_fall_are_seen(min_ratio):
    """C fitted on the start of a decay and extrapolated over the rest forecast real runs
    far too low (docs/analysis.md): the fitted range must have seen two thirds of the fall
    the schedule plans, and 30% of the peak at least."""
    total, warmup = 1000, 50
    steps = np.arange(1, total + 1)
    lr = cosine_lr(steps, 1e-3, warmup, total, min_ratio=min_ratio)
    form = ScheduleForm(LRSchedule(steps, lr), lambda x: np.asarray(x, float), steps, True)
    need = max(MIN_DECAY_TO_FIT_C, MIN_SHARE_OF_FALL_TO_FIT_C * (1 - min_ratio))
    fall = np.where(steps > np.argmax(lr) + 1, 1 - lr / lr.max(), 0.0)  # after the peak
    first = int(steps[np.argmax(fall >= need)])  # the first step whose fall is enough
    assert not form.measures_c(np.arange(2 * warmup, first))
    assert form.measures_c(np.arange(2 * warmup, first + 1))
    assert form.measures_c(steps[2 * warmup :])  # the whole run always shows enough


def test_extrapolation_from_first_part_of_a_run(tmp_path):
    _schedule_run(tmp_path / "run")
    run = load_run(tmp_path / "run")
    # past two thirds of the planned fall, where C is fitted (MIN_SHARE_OF_FALL_TO_FIT_C)
    rf = fit_run(run, use_first=0.7, n_boot=150)
    assert rf.settings["n_fit_points"] < rf.settings["n_eval_points"]
    final_tokens = run.final_tokens
    pred = rf.predict_at(final_tokens)
    observed = pred["observed_loss"]
    sched = pred["forms"]["schedule"]
    assert sched["ci_low"] <= observed <= sched["ci_high"]
    # the plain power law cannot see the cosine decay coming; the schedule form can (from
    # 70%, past the two thirds of the fall that C needs, less of the decay is left to see
    # than from 60%, where this was 3x before C needed them)
    power = pred["forms"]["power"]["value"]
    assert abs(power / observed - 1) > 2 * abs(sched["value"] / observed - 1)
    # the decay is inside the fitted range (C measured): the forecast weighs the schedule
    # form with its floor averaged and the floor-free one by their backtests
    forecast = pred["forecast"]
    assert set(forecast["central"]) <= {"schedule-avgfloor", "schedule-nofloor"}
    assert sum(forecast["weights"].values()) == pytest.approx(1.0)
    assert forecast["ci_low"] <= observed <= forecast["ci_high"]
    assert abs(forecast["value"] / observed - 1) < 0.03
    # its backtest refits only prefixes that show enough decay to measure C, as it does
    assert 0 < rf.settings["backtest"]["schedule"]["origins"] <= 8
    # from 60% (a fall of 63% of the planned 90%) C is not fitted yet: the forecast says it
    # leaves the annealing out, and its interval, from both families, still holds the truth
    early = fit_run(run, use_first=0.6, n_boot=150).predict_at(final_tokens)["forecast"]
    assert set(early["central"]) >= {"power-avgfloor", "schedule-avgfloor"}
    assert any("annealing" in note for note in early["notes"])
    assert early["ci_low"] <= observed <= early["ci_high"]

    target = rf.time_to_target(2.3)
    reach = target["forms"]["schedule"]
    obs = target["observed"]
    assert reach["reached"] and reach["p_reach"] >= 0.85  # 2.3 is near the final 2.27
    # (an upper bound of None: some replicates never reach it, the interval is open above)
    high = reach["tokens"]["ci_high"]
    assert reach["tokens"]["ci_low"] <= obs["tokens"] <= (np.inf if high is None else high)
    # wall-clock follows from the run's own throughput (0.05 s per 8192-token step)
    assert reach["wall_s"]["value"] == pytest.approx(reach["tokens"]["value"] / 8192 * 0.05)
    assert reach["steps"]["value"] == pytest.approx(reach["tokens"]["value"] / 8192)


def test_unreachable_target_is_reported_not_invented(tmp_path):
    write_run(tmp_path / "run", power_law(E, A, ALPHA), noise=0.003, total_steps=2000)
    rf = fit_run(load_run(tmp_path / "run"), forms=("power",), n_boot=100)
    out = rf.time_to_target(1.0)  # below the fitted floor E = 2
    power = out["forms"]["power"]
    assert power["reached"] is False
    assert power["tokens"]["value"] is None
    # the backtested drift widens replicates without bound far out, so a few reach it
    assert power["p_reach"] < 0.2
    assert out["observed"] is None


def test_constant_lr_fixes_annealing_term_at_zero(tmp_path):
    write_run(tmp_path / "run", power_law(E, A, ALPHA), noise=0.003, total_steps=2000)
    rf = fit_run(load_run(tmp_path / "run"), x="steps", n_boot=50)
    c = rf.fits["schedule"].params()["C"]
    assert c["value"] == 0.0 and c["ci_high"] == 0.0


def test_warmup_left_to_the_trainer_is_read_from_the_logged_lr(tmp_path):
    """config.toml's warmup_steps = -1 means "the trainer's default"; the fit must not start
    at step 1, inside the warm-up, but after the first logged step at the peak LR (twice
    over, SKIP_WARMUPS)."""
    run = load_run(
        write_run(
            tmp_path / "auto-warmup",
            power_law(E, A, ALPHA),
            warmup_steps=-1,
            lr=lambda s: cosine_lr(s, 1e-3, 40, 2000),
        )
    )
    assert run.warmup_steps == 40
    assert fit_run(run, forms=("power",), n_boot=0).settings["min_step"] == 2 * 40


def test_annealing_term_waits_until_the_fitted_range_holds_lr_decay(tmp_path):
    """From the first 30% of a cosine run the LR has fallen only ~15%: C is not identified,
    so it is fixed at 0 (and said so) instead of extrapolating to any loss at all."""
    _schedule_run(tmp_path / "run")
    run = load_run(tmp_path / "run")
    early = fit_run(run, use_first=0.3, n_boot=50)
    for name in ("schedule", "schedule-nofloor"):
        c = early.fits[name].params()["C"]
        assert c["value"] == 0.0 and c["ci_high"] == 0.0
        assert "C fixed at 0: the LR fell only to" in early.fits[name].to_json()["notes"][0]
    prediction = early.predict_at(run.final_tokens)
    forms = prediction["forms"]
    assert all(0 < est["ci_low"] <= est["value"] <= est["ci_high"] for est in forms.values())
    # the decay ahead is unmeasured: the schedule family (no annealing term) and the
    # token-only power family count half each, and the forecast says it leaves the decay out
    forecast = prediction["forecast"]
    weights = forecast["weights"]
    assert sum(w for n, w in weights.items() if n.startswith("schedule")) == pytest.approx(0.5)
    assert sum(weights.values()) == pytest.approx(1.0)
    log_mean = sum(w * np.log(forms[n]["value"]) for n, w in weights.items())
    assert forecast["value"] == pytest.approx(np.exp(log_mean), rel=1e-3)  # weights rounded
    assert forecast["ci_low"] <= prediction["observed_loss"] <= forecast["ci_high"]
    assert "leaves out the loss drop of the LR decay" in forecast["notes"][0]
    late = fit_run(run, use_first=0.7, n_boot=0)  # past two thirds of the planned fall
    assert late.fits["schedule"].params()["C"]["value"] > 0
    assert late.fits["schedule"].to_json()["notes"] == []


def test_floor_free_form_recovers_a_floorless_power_law(tmp_path):
    write_run(tmp_path / "run", power_law(0.0, 60.0, 0.15), noise=0.003, total_steps=2000)
    rf = fit_run(load_run(tmp_path / "run"), forms=("power-nofloor",), n_boot=150)
    params = rf.fits["power-nofloor"].params()
    assert set(params) == {"A", "alpha"}
    assert params["A"]["ci_low"] <= 60.0 <= params["A"]["ci_high"]
    assert params["alpha"]["ci_low"] <= 0.15 <= params["alpha"]["ci_high"]
    assert rf.fits["power-nofloor"].df == rf.settings["n_fit_points"] - 2


def test_backtested_drift_widens_intervals_only_past_the_fitted_range(tmp_path):
    """A form that misses a real floor mispredicts later points of its own fitted range
    when refitted on the earlier ones: its drift rate is large, and its intervals past the
    range grow with it, while inside the range they stay the bootstrap's."""
    write_run(tmp_path / "run", power_law(E, A, ALPHA), noise=0.003, total_steps=2000)
    run = load_run(tmp_path / "run")
    # every point (the start rule may begin at 8 of them, which leaves two backtest origins)
    rf = fit_run(run, forms=("power", "power-nofloor"), use_first=0.3, n_boot=200, min_step=0)
    right, wrong = rf.fits["power"], rf.fits["power-nofloor"]
    assert rf.settings["backtest"]["power-nofloor"]["origins"] > 3
    assert wrong.drift > 3 * right.drift > 0

    inside, beyond = wrong.x[len(wrong.x) // 2], 3 * wrong.x[-1]
    drifting = wrong.predict_samples([inside, beyond])
    wrong.drift = 0.0
    still = wrong.predict_samples([inside, beyond])
    np.testing.assert_array_equal(drifting[:, 0], still[:, 0])
    assert np.std(np.log(drifting[:, 1])) > 2 * np.std(np.log(still[:, 1]))
    truth = E + A * run.final_tokens**-ALPHA
    assert abs(rf.predict_at(run.final_tokens)["forms"]["power"]["value"] / truth - 1) < 0.01


def test_floor_averaged_replicates_drift_only_by_what_their_spread_lacks():
    """A floor-averaged fit's replicates already hold the spread over floors, much of what
    its backtest measures: past the fitted range they drift by the part of the backtested
    drift beyond their own spread (in variance), not by all of it on top of it."""
    _, loss = _noisy_power(3)
    fit = fit_curve(PowerForm(float(np.exp(np.mean(np.log(T)))), True), T, loss, floor="averaged")
    beyond = [10 * T[-1]]
    own = np.log(fit.predict_samples(beyond)[:, 0])
    spread = np.std(own)
    assert spread > 0
    fit.with_drift(0.8 * spread / np.log(10), np.random.default_rng(1))  # within their spread
    np.testing.assert_allclose(np.log(fit.predict_samples(beyond)[:, 0]), own)
    fit.drift = 5 * spread / np.log(10)  # far beyond it: the drift sets the spread
    total = np.std(np.log(fit.predict_samples(beyond)[:, 0]))
    assert total == pytest.approx(5 * spread, rel=0.2)
    # inside the fitted range nothing drifts
    inside = [T[len(T) // 2]]
    before = fit.predict_samples(inside)
    fit.drift = 0.0
    np.testing.assert_array_equal(fit.predict_samples(inside), before)


def _constant_lr(warmup):
    return lambda s: 1e-3 * np.minimum(np.asarray(s, dtype=float) / warmup, 1.0)


def test_constant_lr_forecast_of_a_floorless_curve_rests_on_the_floorless_form(tmp_path):
    """A floorless law in the LR area (the warm-up's ramp counts by its LR, as in training
    and in benchmarks/forecast.py): the backtests favour the floor-free form over the
    floor-averaged one, which a flat prior over the floor pulls up."""
    warmup, tokens_per_step = 50, 8192

    def area_tokens(steps):  # tokens at the peak LR, as the schedule forms count them
        steps = np.asarray(steps, dtype=float)
        ramp = np.minimum(steps, warmup)
        return tokens_per_step * (ramp * (ramp + 1) / (2 * warmup) + np.maximum(steps - warmup, 0))

    write_run(
        tmp_path / "run",
        lambda t, s: 60.0 * area_tokens(s) ** -0.15,
        noise=0.003,
        warmup_steps=warmup,
        lr=_constant_lr(warmup),
        eval_every=25,
    )
    run = load_run(tmp_path / "run")
    prediction = fit_run(run, use_first=0.3, n_boot=100).predict_at(run.final_tokens)
    forecast = prediction["forecast"]
    assert sum(w for n, w in forecast["weights"].items() if n.endswith("-nofloor")) > 0.5
    truth = 60.0 * area_tokens(2000) ** -0.15
    assert abs(forecast["value"] / truth - 1) < 0.01
    assert forecast["ci_low"] <= truth <= forecast["ci_high"]
    assert forecast["warnings"] == []


def _issue_curve(path, seed):
    """The curve of issue 11: L = 2.5 + 150 t^-0.3, 5,000 steps of 65,536 tokens, 85
    log-spaced evaluations, 0.5% noise: a floor that is 86% of the final loss."""
    steps = np.unique(np.round(np.geomspace(1, 5000, 85)).astype(int))
    return write_run(
        path,
        power_law(2.5, 150.0, 0.3),
        total_steps=5000,
        tokens_per_step=65536,
        eval_steps=steps,
        noise=0.005,
        seed=seed,
        log_every=50,
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_constant_lr_forecast_of_a_floored_curve_follows_the_backtests_to_the_floor(tmp_path, seed):
    """The floor-free power law is ~12% low here; the run's own backtests show it (its
    refits on early parts of the range under-predict the later part) and the forecast
    rests on the floored forms instead."""
    run = load_run(_issue_curve(tmp_path / "run", seed))
    rf = fit_run(run, use_first=0.3, n_boot=100, seed=seed)
    forecast = rf.predict_at(run.final_tokens)["forecast"]
    truth = 2.5 + 150.0 * run.final_tokens**-0.3
    assert rf.predictions["predict_at"]["forms"]["power-nofloor"]["value"] < 0.98 * truth
    backtest = rf.settings["backtest"]
    rate = {n: backtest[n]["log_error_per_log_distance"] for n in backtest}
    assert rate["power"] < 0.2 * rate["power-nofloor"]
    assert sum(w for n, w in forecast["weights"].items() if "nofloor" not in n) > 0.9
    assert abs(forecast["value"] / truth - 1) < 0.01
    assert forecast["ci_low"] <= truth <= forecast["ci_high"]


def test_forecast_warns_when_its_form_fails_its_checks_or_no_lr_is_logged(tmp_path):
    # 7 evaluations, no LR logged: both warnings
    path = write_run(
        tmp_path / "run",
        power_law(E, A, ALPHA),
        noise=0.003,
        total_steps=2000,
        eval_steps=np.array([100, 300, 500, 800, 1100, 1400, 2000]),
    )
    lines = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        del line["lr"]
    (path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    run = load_run(path)
    rf = fit_run(run, n_boot=50)
    assert set(rf.fits) == {"power", "power-nofloor"}
    warnings = rf.predict_at(10 * run.final_tokens)["forecast"]["warnings"]
    assert any("logs no learning rate: the forecast assumes it was constant" in w for w in warnings)
    assert any("fitted to only 7 points (fewer than 8)" in w for w in warnings)
    # inside the fitted range the forecast is the tail check's winner: nothing to warn about
    assert rf.predict_at(run.final_tokens)["forecast"]["warnings"] == []


def test_forecast_warns_near_an_n_gram_plateau_and_on_repeated_data(tmp_path):
    """Said from what the run recorded: the data's n-gram losses in run.json (the range
    fitted ending within 10% of one, on either side) and its epochs in config.toml."""
    law = power_law(E, A, ALPHA)

    def warnings(path, **levels):
        if levels:
            info = json.loads((path / "run.json").read_text())
            info["data"] = {f"{name}_loss": value for name, value in levels.items()}
            (path / "run.json").write_text(json.dumps(info))
        run = load_run(path)
        rf = fit_run(run, use_first=0.3, n_boot=20)
        end = float(next(iter(rf.fits.values())).loss[-1])
        return end, rf.predict_at(run.final_tokens)["forecast"]["warnings"]

    end, said = warnings(write_run(tmp_path / "plain", law, noise=0.002))
    assert not any("gram loss" in w or "times" in w for w in said), said
    for name, levels, near in (
        ("unigram-above", {"unigram": 1.05 * end, "bigram": 0.5 * end}, "unigram"),
        ("bigram-below", {"unigram": 2.0 * end, "bigram": 0.95 * end}, "bigram"),
        ("between", {"unigram": 1.2 * end, "bigram": 0.8 * end}, None),
    ):
        _, said = warnings(write_run(tmp_path / name, law, noise=0.002), **levels)
        named = [level for level in levels if any(f"data's {level} loss" in w for w in said)]
        assert named == ([near] if near else []), said
    _, said = warnings(write_run(tmp_path / "repeated", law, noise=0.002, epochs=4.0))
    assert any("goes over its data 4 times" in w for w in said), said


def test_without_warmup_the_fit_skips_the_fast_initial_drop(tmp_path):
    """Warm-up 0: the run's backtests move the start past a transient that no form
    describes, while a clean power law is fitted from its first point."""
    law = power_law(E, A, ALPHA)
    for name, transient in (("clean", 0.0), ("drop", 3.0)):
        write_run(
            tmp_path / name,
            lambda t, s, c=transient: law(t, s) + c * np.exp(-s / 25.0),
            noise=0.003,
            total_steps=2000,
            eval_every=50,
        )
    clean, drop = load_run(tmp_path / "clean"), load_run(tmp_path / "drop")
    assert clean.warmup_steps == drop.warmup_steps == 0
    clean_start = fit_run(clean, forms=("power",), n_boot=0).settings["min_step"]
    rf = fit_run(drop, forms=("power",), n_boot=100)
    assert clean_start <= 0.01 * 2000 < rf.settings["min_step"]
    alpha = rf.fits["power"].params()["alpha"]
    # from step 1 the transient bends the fit away from the law
    early = fit_run(drop, forms=("power",), n_boot=100, min_step=0).fits["power"].params()
    assert not early["alpha"]["ci_low"] <= ALPHA <= early["alpha"]["ci_high"]
    assert abs(alpha["value"] - ALPHA) < 0.5 * abs(early["alpha"]["value"] - ALPHA)


def test_without_warmup_the_start_holds_to_the_form_on_sparse_evaluations(tmp_path):
    """30 log-spaced evaluations, warm-up 0, a transient 20x the loss at step 1: with only
    a few points past the drop, the backtests alone kept the drop in the fit (start 0,
    forecast 34-35% low on seeds 3-5); a start counts only where the floored power law
    holds from its first point, and may leave as few points as one backtest needs, so the
    fit starts past the drop (8 points from step 147; asking for one point more kept
    points from step 46, where what was left of the drop put the forecast 16% high on seed
    3; now 2-3% high on seeds 3-5, against 28-30% low with the drop kept)."""
    total, tokens_per_step = 5000, 65536
    steps = np.unique(np.round(np.geomspace(1, total, 30)).astype(int))
    E_, alpha = 2.0, 0.6
    A_ = 1.5 * (total * tokens_per_step) ** alpha  # final loss 3.5

    def loss(t, s):
        power = E_ + A_ * np.asarray(t, dtype=float) ** -alpha
        start = E_ + A_ * (20.0 * tokens_per_step) ** -alpha
        return power + start * np.exp(-np.asarray(s, dtype=float) / 25.0)

    run = load_run(
        write_run(
            tmp_path / "run",
            loss,
            total_steps=total,
            tokens_per_step=tokens_per_step,
            eval_steps=steps,
            noise=0.005,
            seed=3,
            log_every=50,
        )
    )
    rf = fit_run(run, use_first=0.3, n_boot=100)
    truth = E_ + A_ * run.final_tokens**-alpha
    assert rf.settings["min_step"] > 100  # the drop is down to exp(-4) of its start there
    value = rf.predict_at(run.final_tokens)["forecast"]["value"]
    kept = fit_run(run, use_first=0.3, n_boot=0, min_step=0).predict_at(run.final_tokens)
    assert abs(value / truth - 1) < 0.2 * abs(kept["forecast"]["value"] / truth - 1)


@pytest.mark.parametrize("seed", [4, 9])
def test_forecast_benchmark_oracle_recovers_its_generating_form(tmp_path, seed):
    """The oracle of benchmarks/forecast.py (--oracle-true-form) fits each synthetic
    curve's own generating form: without noise it must land on the true final loss from
    the first 30%, on fit_run's points and on all of them (warm-up and fast drop included),
    while the forms fit_run fits need not."""
    bench = load_benchmark("forecast")
    curve = {**bench.draw_curve(seed), "noise": 0.0}
    run_dir = bench.write_curve(curve, tmp_path / "run")
    truth = float(bench.true_loss(curve, [bench.STEPS])[0])
    row = bench.measure(run_dir, truth, 0.3, 20, curve)
    assert abs(row["oracle_error"]) < 1e-4
    assert abs(row["oracle_all_error"]) < 1e-4
    # with another warm-up in its LR area the form is wrong, and misses: the check has teeth
    wrong = {**curve, "warmup_steps": curve["warmup_steps"] + 500}
    rf = fit_run(load_run(run_dir), use_first=0.3, n_boot=20)
    assert abs(bench.oracle(wrong, truth, 0.3, 20, rf)["oracle_error"]) > 1e-3


def test_evaluation_scatter_is_the_noise_of_single_evaluations():
    """The scatter of the evaluations around the curve, measured without a model: the noise
    the curve was drawn with, over the noise levels of a fixed validation set, and unmoved by
    the curve's own bend; None where too few points are left to measure it."""
    from oneepoch.analysis.runfit import evaluation_scatter

    steps = np.arange(100, 5001, 50, dtype=float)
    for noise in (0.002, 0.005, 0.02):
        measured = []
        for seed in range(8):
            rng = np.random.default_rng(seed)
            loss = (2.0 + 30.0 * steps**-0.4) * np.exp(rng.normal(0.0, noise, steps.size))
            measured.append(evaluation_scatter(steps, loss))
        assert 0.8 < np.median(measured) / noise < 1.2, (noise, measured)
    smooth = evaluation_scatter(steps, 2.0 + 30.0 * steps**-0.4)
    assert smooth < 1e-4  # the curve alone, without noise: next to nothing
    assert evaluation_scatter(steps[:6], 2.0 + 30.0 * steps[:6] ** -0.4) is None


def test_the_final_evaluation_falls_in_its_interval_where_the_curves_is_too_narrow(tmp_path):
    """Late in a run the fit pins the curve down better than one evaluation can: the
    curve's interval misses most fresh draws of the final evaluation, the evaluation's
    interval (the curve's, widened by the scatter or the form's held-out error) holds about
    90% of them."""
    noise = 0.01
    write_run(tmp_path / "run", power_law(2.0, 300.0, 0.3), noise=noise, eval_every=20)
    run = load_run(tmp_path / "run")
    forecast = fit_run(run, use_first=0.9, n_boot=100).predict_at(run.final_tokens)["forecast"]
    evaluation = forecast["evaluation"]
    truth = power_law(2.0, 300.0, 0.3)(run.final_tokens, None)
    draws = truth * np.exp(np.random.default_rng(1).normal(0.0, noise, 2000))
    in_curve = np.mean((forecast["ci_low"] <= draws) & (draws <= forecast["ci_high"]))
    in_evaluation = np.mean((evaluation["ci_low"] <= draws) & (draws <= evaluation["ci_high"]))
    assert in_curve < 0.6 and 0.8 < in_evaluation < 0.98, (in_curve, in_evaluation)
    assert evaluation["ci_low"] < forecast["ci_low"] < forecast["ci_high"] < evaluation["ci_high"]
    assert 0.7 < evaluation["scatter"] / noise < 1.3


def test_near_the_fitted_range_the_interval_takes_the_forms_held_out_error_when_larger(tmp_path):
    """Within EXTRAPOLATION_RATIO of the fitted range the forecast is the tail check's winner,
    and one evaluation there may miss it by what that form missed its held-out tail by; far
    past the range the forms' backtested drift already widens the curve's interval."""
    from oneepoch.analysis.runfit import evaluation_interval

    forecast = {"value": 3.0, "ci_low": 2.99, "ci_high": 3.01}
    plain = evaluation_interval(forecast, None, 0.9)
    assert (plain["ci_low"], plain["ci_high"]) == (2.99, 3.01)
    by_scatter = evaluation_interval(forecast, 0.002, 0.9)
    by_tail = evaluation_interval(forecast, 0.002, 0.9, tail_error=0.01)
    assert by_tail["ci_low"] < by_scatter["ci_low"] < 2.99
    assert 3.01 < by_scatter["ci_high"] < by_tail["ci_high"]
    half = np.hypot(np.log(3.01 / 3.0), 1.6449 * 0.01)  # in quadrature, in log loss
    assert np.log(by_tail["ci_high"] / 3.0) == pytest.approx(half, rel=1e-3)

    write_run(tmp_path / "run", power_law(2.0, 300.0, 0.3), noise=0.01, eval_every=20)
    run = load_run(tmp_path / "run")
    rf = fit_run(run, use_first=0.9, n_boot=50)
    near = rf.predict_at(run.final_tokens)["forecast"]
    assert near["evaluation"]["tail_error"] == rf.tail_check["rmse_log"][near["form"]]
    far = rf.predict_at(10 * run.final_tokens)["forecast"]
    assert far["evaluation"]["tail_error"] is None
