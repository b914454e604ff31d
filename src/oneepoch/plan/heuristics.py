"""Batch size and learning rate of a planned run: stated rules of thumb, not tuned optima.

Batch: enough optimizer steps matter more at this scale than large batches. Kaplan et al.'s
critical batch B_crit(L) = 2e8 / L^(1/0.21) tokens is ~1e5 tokens at a loss of 5 nats and
grows as the loss falls, far above what a CPU run can afford per step, so small models lose
little sample efficiency to a smaller batch. The planner aims at ~1,000 steps: the largest
power of two of sequences with at least TARGET_STEPS steps, within [MIN_BATCH, MAX_BATCH].

Gradient accumulation: only to bound memory. The logits (micro-batch x seq_len x vocab, fp32,
with their softmax and gradient about 3 copies) are the largest activation of a small-model
step; the batch is split into the fewest power-of-two micro-batches that keep them under
1 GiB. It changes nothing but memory and a little speed.

Learning rate: Kaplan et al. (2020, appendix D) fit the best LR of their Adam runs as
LR(N) ~= 0.003239 - 0.0001395 ln N (N non-embedding parameters); we use it as is, clipped
to [1e-4, 3e-3]. The trainer's defaults (linear warm-up over 2% of steps, cosine decay to
10%, AdamW betas 0.9/0.95, weight decay 0.1, clip 1.0) stay unchanged.
"""

from __future__ import annotations

import math

TARGET_STEPS = 1000
MIN_BATCH, MAX_BATCH = 8, 512
MIN_STEPS = 50  # fewer optimizer steps than this is not a training run worth planning
LR_MIN, LR_MAX = 1e-4, 3e-3
LOGITS_BYTES = 1 << 30  # a micro-batch's logits and their gradient stay under 1 GiB


def batch_size(tokens: float, seq_len: int) -> int:
    """Sequences per optimizer step for a run of ``tokens`` tokens."""
    wanted = tokens / (seq_len * TARGET_STEPS)
    b = 2 ** math.floor(math.log2(wanted)) if wanted >= 1 else 1
    return int(min(MAX_BATCH, max(MIN_BATCH, b)))


def learning_rate(non_embedding_params: float) -> float:
    lr = 0.003239 - 0.0001395 * math.log(max(non_embedding_params, 1.0))
    return float(min(LR_MAX, max(LR_MIN, lr)))


def grad_accum(batch: int, seq_len: int, vocab_size: int) -> int:
    """Micro-batches per step so that one micro-batch's logits fit LOGITS_BYTES."""
    ga = 1
    while ga < batch and (batch // ga) * seq_len * vocab_size * 4 * 3 > LOGITS_BYTES:
        ga *= 2
    return ga
