"""The n-gram losses of a dataset: the validation loss of the best model that ignores context
(unigram) and of one that sees only the previous token (bigram).

A language model trained from scratch passes these levels in turn and often sits near one
for a while before it learns to use more context (a plateau), after which its loss falls
faster than the stretch before. Whether and when it leaves is not in the curve so far, so
the trainer records both values in run.json and the learning-curve forecast warns when the
range it fits ends near one (analysis/runfit.py). Torch-free.
"""

from __future__ import annotations

import numpy as np

from oneepoch.data.dataset import Split

# Counts come from at most this many training tokens, read as SAMPLE_CHUNKS stretches
# spread evenly over the split: exact on small corpora, about a second on large ones.
TRAIN_SAMPLE_TOKENS = 1 << 24
SAMPLE_CHUNKS = 16


def ngram_losses(train: Split, val: Split, val_windows: int, seq_len: int) -> dict[str, float]:
    """{"unigram_loss", "bigram_loss"}: mean -log p over the targets of the first
    ``val_windows`` validation windows (the tokens the trainer's evaluation predicts), with
    p estimated from the training split. Unigram: token frequencies with add-1/2 smoothing,
    so a token unseen in training costs a finite loss. Bigram: the previous token's
    successor counts interpolated with the unigram by Witten-Bell (the unigram gets the
    weight of the number of distinct successors seen), which has no constant to tune."""
    chunks = [train.read(start, length) for start, length in _sample_ranges(train.num_tokens)]
    windows = [val.read(i * seq_len, seq_len + 1) for i in range(val_windows)]
    context = np.concatenate([w[:-1] for w in windows])
    targets = np.concatenate([w[1:] for w in windows])
    size = 1 + int(max(max(int(c.max()) for c in chunks if c.size), targets.max(), context.max()))

    counts = sum(np.bincount(c, minlength=size) for c in chunks).astype(float)
    unigram = (counts + 0.5) / (counts.sum() + 0.5 * size)

    pairs = np.concatenate([c[:-1].astype(np.int64) * size + c[1:] for c in chunks])
    keys, pair_counts = np.unique(pairs, return_counts=True)
    seen = np.bincount(keys // size, weights=pair_counts, minlength=size)  # c(a)
    distinct = np.bincount(keys // size, minlength=size).astype(float)  # successors of a
    wanted = context.astype(np.int64) * size + targets
    at = np.minimum(np.searchsorted(keys, wanted), keys.size - 1)
    pair = np.where(keys[at] == wanted, pair_counts[at], 0)
    prior = distinct[context]
    total = seen[context] + prior
    bigram = np.where(
        total > 0,
        (pair + prior * unigram[targets]) / np.maximum(total, 1e-300),
        unigram[targets],
    )
    return {
        "unigram_loss": float(-np.log(unigram[targets]).mean()),
        "bigram_loss": float(-np.log(bigram).mean()),
    }


def _sample_ranges(n_tokens: int) -> list[tuple[int, int]]:
    """(start, length) of the stretches of the training split to count."""
    if n_tokens <= TRAIN_SAMPLE_TOKENS:
        return [(0, n_tokens)]
    length = TRAIN_SAMPLE_TOKENS // SAMPLE_CHUNKS
    starts = np.linspace(0, n_tokens - length, SAMPLE_CHUNKS).astype(np.int64)
    return [(int(s), length) for s in starts]
