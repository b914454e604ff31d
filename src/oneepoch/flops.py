"""Parameter counts and training FLOPs per token, from the model's shape alone.

Pure Python (no torch): the planner and the analysis side use it too.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Shape:
    n_layer: int
    n_head: int
    d_model: int
    seq_len: int
    vocab_size: int


def param_counts(s: Shape) -> dict[str, int]:
    """Parameters of the GPT in model.py (biases included, output head tied to the embedding).

    ``non_embedding`` excludes the token and position embeddings, as in Kaplan et al. 2020.
    """
    d = s.d_model
    per_layer = (
        2 * d  # ln_1
        + 3 * d * d
        + 3 * d  # qkv
        + d * d
        + d  # attention output projection
        + 2 * d  # ln_2
        + 4 * d * d
        + 4 * d  # mlp in
        + 4 * d * d
        + d  # mlp out
    )
    non_embedding = s.n_layer * per_layer + 2 * d  # + final layer norm
    embedding = s.vocab_size * d + s.seq_len * d
    return {
        "total": non_embedding + embedding,
        "non_embedding": non_embedding,
        "embedding": embedding,
    }


def forward_flops_per_token(s: Shape) -> float:
    """Matmul FLOPs of one forward pass per token (2 FLOPs per multiply-add).

    Per layer: QKV (2*d*3d), attention scores and weighted values (2*T*d each, counting the
    full T x T product as the kernels compute it), output projection (2*d*d), MLP (2*2*d*4d).
    Plus the output head (2*d*V). Norms, softmax and GELU are ignored (< 1% here).
    """
    d, t = s.d_model, s.seq_len
    per_layer = 2 * d * 3 * d + 2 * t * d + 2 * t * d + 2 * d * d + 2 * 2 * d * 4 * d
    return float(s.n_layer * per_layer + 2 * d * s.vocab_size)


def train_flops_per_token(s: Shape) -> float:
    """Forward plus backward (backward = 2x forward) matmul FLOPs per token."""
    return 3.0 * forward_flops_per_token(s)


def activation_bytes(s: Shape, sequences: int) -> float:
    """Memory a micro-batch of ``sequences`` takes beyond the model and AdamW state, as
    counted before anything is allocated: activations kept for the backward pass (~16 values
    of 2 bytes per token, layer and width, as with bfloat16) and float32 logits with their
    gradient (2 x vocab x 4 bytes per token). The trainer's memory check and the planner's
    bound on what a calibration times share it."""
    return sequences * s.seq_len * (s.n_layer * s.d_model * 16 * 2 + 2 * s.vocab_size * 4)
