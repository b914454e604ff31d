"""The n-gram losses the trainer records (data/ngram.py): what they compute, on splits made
here, against sums written out by hand."""

import math

import numpy as np

from oneepoch.data import ngram
from oneepoch.data.dataset import Split


def test_they_are_the_validation_targets_cross_entropies_under_training_counts():
    train = Split([np.array([0, 0, 0, 1, 1, 2], dtype=np.uint16)])
    # two windows of 3: targets are tokens 1-3 and 4-6, each after the token before it
    val = Split([np.array([2, 0, 1, 2, 0, 0, 3], dtype=np.uint16)])
    losses = ngram.ngram_losses(train, val, val_windows=2, seq_len=3)
    context, targets = [2, 0, 1, 2, 0, 0], [0, 1, 2, 0, 0, 3]
    # unigram: counts of tokens 0..3 are 3, 2, 1, 0, each + 1/2
    p = np.array([3.5, 2.5, 1.5, 0.5]) / 8.0
    assert math.isclose(losses["unigram_loss"], -np.mean(np.log(p[targets])), rel_tol=1e-12)
    # bigram, Witten-Bell: pairs 00 00 01 11 12; after 0: 3 pairs, 2 distinct successors;
    # after 1: 2 pairs, 2 distinct; after 2: none (the unigram alone)
    pairs = {(0, 0): 2, (0, 1): 1, (1, 1): 1, (1, 2): 1}
    seen, distinct = {0: 3, 1: 2, 2: 0}, {0: 2, 1: 2, 2: 0}

    def bigram(a, b):
        if seen[a] + distinct[a] == 0:
            return p[b]
        return (pairs.get((a, b), 0) + distinct[a] * p[b]) / (seen[a] + distinct[a])

    expected = -np.mean([np.log(bigram(a, b)) for a, b in zip(context, targets)])
    assert math.isclose(losses["bigram_loss"], expected, rel_tol=1e-12)


def test_a_large_split_is_counted_from_stretches_spread_over_it(monkeypatch):
    """A first-order Markov chain: both losses near its true entropies, exactly counted or
    from a sample of the split."""
    rng = np.random.default_rng(0)
    k = 20
    start = rng.dirichlet(np.ones(k))
    move = rng.dirichlet(np.full(k, 0.3), size=k)

    def chain(n):
        out = np.empty(n, dtype=np.uint16)
        out[0] = rng.choice(k, p=start)
        cum = move.cumsum(axis=1)
        draws = rng.random(n)
        for i in range(1, n):
            out[i] = min(np.searchsorted(cum[out[i - 1]], draws[i]), k - 1)
        return out

    tokens = chain(200_000)
    train = Split([tokens[:120_000], tokens[120_000:]])  # the stretches cross shards
    val = Split([chain(40_001)])
    exact = ngram.ngram_losses(train, val, val_windows=200, seq_len=200)
    monkeypatch.setattr(ngram, "TRAIN_SAMPLE_TOKENS", 32_000)
    assert ngram._sample_ranges(train.num_tokens)[-1] == (198_000, 2_000)
    sampled = ngram.ngram_losses(train, val, val_windows=200, seq_len=200)
    # the chain's stationary distribution and its entropy rate
    values, vectors = np.linalg.eig(move.T)
    stationary = np.real(vectors[:, np.argmin(np.abs(values - 1))])
    stationary /= stationary.sum()
    h1 = -np.sum(stationary * np.log(stationary))
    h2 = -np.sum(stationary[:, None] * move * np.log(move))
    for losses in (exact, sampled):
        assert abs(losses["unigram_loss"] / h1 - 1) < 0.01
        assert abs(losses["bigram_loss"] / h2 - 1) < 0.03
        assert losses["bigram_loss"] < losses["unigram_loss"]
    assert sampled != exact
