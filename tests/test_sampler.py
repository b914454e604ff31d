import numpy as np
import pytest

from oneepoch.errors import UserError
from oneepoch.sampler import FeistelPermutation, OnePassSampler, RepeatedSampler, num_windows


@pytest.mark.parametrize("n", [1, 2, 3, 5, 64, 1000, 4097, 65537])
def test_feistel_is_a_permutation(n):
    for seed in range(3):
        out = FeistelPermutation(n, seed)(np.arange(n))
        assert np.array_equal(np.sort(out), np.arange(n))


def test_feistel_depends_on_seed_and_is_shuffled():
    a = FeistelPermutation(10_000, 0)(np.arange(10_000))
    b = FeistelPermutation(10_000, 1)(np.arange(10_000))
    assert not np.array_equal(a, b)
    # A shuffle, not a rotation: neighbours end up far apart on average.
    assert np.mean(np.abs(np.diff(a))) > 1000
    # Correlation between position and value is small.
    assert abs(np.corrcoef(np.arange(10_000), a)[0, 1]) < 0.05


def test_one_pass_uses_no_window_twice_over_the_whole_run():
    tokens, seq, batch = 100_003, 16, 7
    sampler = OnePassSampler(tokens, seq, batch, seed=3)
    steps = sampler.max_steps
    seen = np.concatenate([sampler.windows(s) for s in range(steps)])
    assert len(seen) == steps * batch
    assert len(np.unique(seen)) == len(seen)  # every window at most once
    assert seen.min() >= 0 and seen.max() < num_windows(tokens, seq)
    # Windows stay inside the split: the last window's last token exists.
    assert seen.max() * seq + seq + 1 <= tokens
    prog = sampler.progress(steps)
    assert prog["tokens"] == prog["unique_tokens"] == steps * batch * seq
    assert prog["epoch"] <= 1.0


def test_batch_is_a_pure_function_of_seed_and_step():
    a = OnePassSampler(50_000, 32, 8, seed=5)
    b = OnePassSampler(50_000, 32, 8, seed=5)
    for step in [0, 17, 100, 3]:
        assert np.array_equal(a.windows(step), b.windows(step))
    assert not np.array_equal(a.windows(0), OnePassSampler(50_000, 32, 8, seed=6).windows(0))


def test_one_pass_refuses_a_budget_beyond_the_data():
    sampler = OnePassSampler(10_000, 16, 4, seed=0)
    sampler.check_budget(sampler.max_steps)
    with pytest.raises(UserError, match=r"unique tokens.*--epochs"):
        sampler.check_budget(sampler.max_steps + 1)


def test_repeated_sampler_epochs_and_unique_tokens():
    seq, batch, steps, epochs = 8, 4, 50, 5
    sampler = RepeatedSampler(100_000, seq, batch, seed=1, epochs=epochs, steps=steps)
    assert sampler.pool == steps * batch // epochs  # 40 windows
    windows = np.concatenate([sampler.windows(s) for s in range(steps)])
    # Only the first U windows are used, each exactly `epochs` times.
    assert windows.max() < sampler.pool
    counts = np.bincount(windows, minlength=sampler.pool)
    assert np.all(counts == epochs)
    # Each epoch is a full pass, reshuffled.
    per_epoch = windows.reshape(epochs, sampler.pool)
    assert all(np.array_equal(np.sort(e), np.arange(sampler.pool)) for e in per_epoch)
    assert not np.array_equal(per_epoch[0], per_epoch[1])
    # Accounting: unique tokens stop growing after the first epoch.
    assert sampler.progress(5)["unique_tokens"] == 5 * batch * seq
    assert sampler.progress(steps)["unique_tokens"] == sampler.pool * seq
    assert sampler.progress(steps)["tokens"] == steps * batch * seq
    assert sampler.progress(steps)["epoch"] == pytest.approx(epochs)
    assert sampler.progress(15)["epoch"] == pytest.approx(1.5)


def test_repeated_sampler_refuses_more_unique_data_than_exists():
    with pytest.raises(UserError, match="unique tokens"):
        RepeatedSampler(1_000, 8, 4, seed=0, epochs=2, steps=1_000)
