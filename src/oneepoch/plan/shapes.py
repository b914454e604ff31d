"""Parameter targets become model shapes (n_layer, n_head, d_model).

Candidates: d_model a multiple of 8 up to 256 (then of 32, 64, 128 and 256 as models grow),
heads of 64 dimensions where d_model allows (else the most of at least 32 that divide it), and
an aspect ratio d_model / n_layer between 24 and 128. Kaplan et al. (2020, fig. 5) found loss
within a few percent over a wide range of aspect ratios at fixed non-embedding parameters, so
among shapes of near-equal size the planner is free to pick the one that runs fastest here
(see ``planner``).

Why steps of 8 below 256: at a fixed compute a shape's tokens per parameter goes as about
1/N^2, so a ratio rule held within 10% needs neighbours within ~10% in N. With a small
vocabulary's embedding most of a small model, d_model in steps of 32 left them 1.2-1.4x
apart (1x2x64: 320k parameters, then 370k and 518k at vocabulary 4096); steps of 8, with the
layers the aspect bounds allow, leave them at most 1.15x apart from 0.25M up, 1.09x from
0.6M (docs/planning.md).

For allocation, the rules need training FLOPs per token as a smooth function of a parameter
count. ``FlopsCurve`` gives it by interpolating, in log-log, along a ladder of shapes of
aspect ratio 64 (GPT-2 small is 768 / 12), each evaluated with oneepoch.flops: the real
cost, output head and attention included, not 6N.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from functools import lru_cache

from oneepoch.flops import Shape, param_counts, train_flops_per_token

COUNT_KINDS = ("total", "non_embedding")
MIN_D_MODEL = 32
FINE_STEP = 8  # d_model steps below 256 (see the module docstring)
ASPECT_MIN, ASPECT_MAX = 24, 128
LADDER_ASPECT = 64
MAX_LAYERS = 128
NEAR_EQUAL = 1.15  # shapes within 15% of the target count compete on speed


def d_model_grid() -> list[int]:
    return (
        list(range(MIN_D_MODEL, 256, FINE_STEP))
        + list(range(256, 512, 32))
        + list(range(512, 1024, 64))
        + list(range(1024, 4096, 128))
        + list(range(4096, 8192 + 1, 256))
    )


def head_count(d_model: int) -> int:
    """Heads of 64 dimensions (GPT-2) when d_model is a multiple of 64 from 128 up; else the
    most heads of at least 32 dimensions that divide d_model (32 for its multiples)."""
    if d_model >= 128 and d_model % 64 == 0:
        return d_model // 64
    return next(n for n in range(max(1, d_model // 32), 0, -1) if d_model % n == 0)


@dataclass(frozen=True)
class Candidate:
    shape: Shape
    total: int
    non_embedding: int
    flops_per_token: float

    def count(self, kind: str) -> int:
        return self.total if kind == "total" else self.non_embedding

    def label(self) -> str:
        s = self.shape
        return f"{s.n_layer}x{s.n_head}x{s.d_model}"


def make_candidate(n_layer: int, d_model: int, seq_len: int, vocab_size: int) -> Candidate:
    shape = Shape(n_layer, head_count(d_model), d_model, seq_len, vocab_size)
    counts = param_counts(shape)
    return Candidate(shape, counts["total"], counts["non_embedding"], train_flops_per_token(shape))


@lru_cache(maxsize=16)
def all_candidates(seq_len: int, vocab_size: int) -> tuple[Candidate, ...]:
    out = []
    for d in d_model_grid():
        lo = max(1, math.ceil(d / ASPECT_MAX))
        hi = min(MAX_LAYERS, int(d // ASPECT_MIN))
        out += [make_candidate(n, d, seq_len, vocab_size) for n in range(lo, max(lo, hi) + 1)]
    return tuple(out)


def smallest(seq_len: int, vocab_size: int) -> Candidate:
    return make_candidate(1, MIN_D_MODEL, seq_len, vocab_size)


@lru_cache(maxsize=32)
def _sorted_by(kind: str, seq_len: int, vocab_size: int) -> tuple[list[float], list[Candidate]]:
    ranked = sorted(all_candidates(seq_len, vocab_size), key=lambda c: c.count(kind))
    return [math.log(c.count(kind)) for c in ranked], ranked


def near_equal(
    target: float, kind: str, seq_len: int, vocab_size: int, tolerance: float = NEAR_EQUAL
) -> list[Candidate]:
    """Shapes whose ``kind`` count is within ``tolerance`` of ``target``, closest first; only
    the nearest when none is that close (a target below the smallest model gets that)."""
    logs, ranked = _sorted_by(kind, seq_len, vocab_size)
    x, width = math.log(max(target, 1.0)), math.log(tolerance)
    lo, hi = bisect.bisect_left(logs, x - width), bisect.bisect_right(logs, x + width)
    if lo == hi:
        window = [
            min(range(max(0, lo - 1), min(len(ranked), lo + 1)), key=lambda i: abs(logs[i] - x))
        ]
    else:
        window = range(lo, hi)
    return sorted(
        (ranked[i] for i in window),
        key=lambda c: (abs(math.log(c.count(kind)) - x), c.shape.n_layer),
    )


class FlopsCurve:
    """Training FLOPs per token as a function of a parameter count (total or non-embedding)."""

    def __init__(self, seq_len: int, vocab_size: int):
        ladder = [
            make_candidate(
                min(MAX_LAYERS, max(1, round(d / LADDER_ASPECT))), d, seq_len, vocab_size
            )
            for d in d_model_grid()
        ]
        self._points = {
            kind: (
                [math.log(c.count(kind)) for c in ladder],
                [math.log(c.flops_per_token) for c in ladder],
            )
            for kind in COUNT_KINDS
        }

    def __call__(self, params: float, kind: str = "total") -> float:
        xs, ys = self._points[kind]
        x = math.log(max(params, 1.0))
        if x <= xs[0]:
            return math.exp(ys[0])  # below the smallest model its cost is the floor
        i = min(bisect.bisect_left(xs, x), len(xs) - 1)
        # inside: interpolate; past the largest shape: continue the last segment
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return math.exp(y0 + (y1 - y0) * (x - x0) / (x1 - x0))
