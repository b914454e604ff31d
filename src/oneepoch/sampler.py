"""Which training windows make up the batch at step s: a pure function of (seed, s, data).

The training split is cut into windows of ``seq_len + 1`` tokens at stride ``seq_len``
(window i holds tokens [i*T, i*T + T + 1)). Sample number j of the run (j = s * batch + b)
maps to a window through a seeded pseudo-random permutation, computed per index with a
Feistel network, so no table of all windows is ever held and any step can be recomputed
after a resume, on any number of ranks.

- ``OnePassSampler``: one permutation of all windows; sample j uses window perm(j), so no
  window is used twice, and asking for more samples than windows is an error.
- ``RepeatedSampler``: the multi-epoch baseline. Only the first U windows are used, with a
  fresh permutation per epoch: sample j is in epoch j // U.
"""

from __future__ import annotations

import numpy as np

from oneepoch.errors import UserError

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a cheap, well-distributed 64-bit hash (uint64 arrays wrap)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class FeistelPermutation:
    """A seeded bijection of [0, n), evaluated on arrays of indices in O(1) memory.

    A balanced Feistel network permutes [0, 4^h) with 4^h >= n; indices that land outside
    [0, n) are sent through again ("cycle walking"), which keeps it a bijection of [0, n).
    """

    ROUNDS = 6

    def __init__(self, n: int, seed: int):
        if n < 1:
            raise ValueError("permutation of an empty range")
        self.n = n
        self.half_bits = max(1, (max(n - 1, 1).bit_length() + 1) // 2)
        self.half_mask = np.uint64((1 << self.half_bits) - 1)
        seed_mix = _mix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
        self.keys = [
            _mix64(
                np.array(
                    [int(seed_mix) ^ (r * 0x9E3779B97F4A7C15 & 0xFFFFFFFFFFFFFFFF)], dtype=np.uint64
                )
            )[0]
            for r in range(self.ROUNDS)
        ]

    def _round_trip(self, x: np.ndarray) -> np.ndarray:
        left = x >> np.uint64(self.half_bits)
        right = x & self.half_mask
        for key in self.keys:
            left, right = right, left ^ (_mix64(right ^ key) & self.half_mask)
        return (left << np.uint64(self.half_bits)) | right

    def __call__(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n):
            raise IndexError("permutation index out of range")
        with np.errstate(over="ignore"):
            x = self._round_trip(idx.astype(np.uint64))
            outside = x >= np.uint64(self.n)
            while outside.any():
                x[outside] = self._round_trip(x[outside])
                outside = x >= np.uint64(self.n)
        return x.astype(np.int64)


def num_windows(split_tokens: int, seq_len: int) -> int:
    return max(0, (split_tokens - 1) // seq_len)


class OnePassSampler:
    kind = "one-pass"

    def __init__(self, split_tokens: int, seq_len: int, batch_size: int, seed: int):
        self.seq_len, self.batch_size = seq_len, batch_size
        self.pool = num_windows(split_tokens, seq_len)
        if self.pool < batch_size:
            raise UserError(
                f"the training split holds {split_tokens} tokens, fewer than one batch of "
                f"{batch_size} windows of {seq_len + 1}; prepare more data or lower --batch-size."
            )
        self.perm = FeistelPermutation(self.pool, seed)

    @property
    def max_steps(self) -> int:
        return self.pool // self.batch_size

    def check_budget(self, steps: int) -> None:
        if steps > self.max_steps:
            raise UserError(
                f"one pass over the training split allows {self.max_steps} steps "
                f"({self.max_steps * self.batch_size * self.seq_len:,} unique tokens at batch "
                f"{self.batch_size} x {self.seq_len}) but the budget needs {steps}; lower the budget, "
                "prepare more data, or ask for repetition with --epochs."
            )

    def windows(self, step: int) -> np.ndarray:
        """Window indices of the global batch at ``step`` (0-based)."""
        j = np.arange(step * self.batch_size, (step + 1) * self.batch_size)
        return self.perm(j)

    def progress(self, steps_done: int) -> dict:
        samples = steps_done * self.batch_size
        return {
            "tokens": samples * self.seq_len,
            "unique_tokens": samples * self.seq_len,
            "epoch": samples / self.pool,
        }


class RepeatedSampler:
    kind = "repeated"

    def __init__(
        self, split_tokens: int, seq_len: int, batch_size: int, seed: int, epochs: float, steps: int
    ):
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        available = num_windows(split_tokens, seq_len)
        total = steps * batch_size
        self.pool = max(
            1, int(np.ceil(total / epochs))
        )  # U windows, so that `epochs` passes fill the budget
        if self.pool > available:
            raise UserError(
                f"{epochs:g} epochs of {total * seq_len:,} tokens need {self.pool * seq_len:,} unique "
                f"tokens but the training split holds {available * seq_len:,}; lower the budget or the epochs."
            )
        self._perms: dict[int, FeistelPermutation] = {}

    def _perm(self, epoch: int) -> FeistelPermutation:
        if epoch not in self._perms:
            self._perms = {epoch: FeistelPermutation(self.pool, self.seed * 1_000_003 + epoch)}
        return self._perms[epoch]

    def windows(self, step: int) -> np.ndarray:
        j = np.arange(step * self.batch_size, (step + 1) * self.batch_size)
        epoch, pos = np.divmod(j, self.pool)
        out = np.empty_like(j)
        for e in np.unique(epoch):
            mask = epoch == e
            out[mask] = self._perm(int(e))(pos[mask])
        return out

    def progress(self, steps_done: int) -> dict:
        samples = steps_done * self.batch_size
        return {
            "tokens": samples * self.seq_len,
            "unique_tokens": min(samples, self.pool) * self.seq_len,
            "epoch": samples / self.pool,
        }
