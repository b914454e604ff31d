"""Synthetic run directories with known learning curves, for tests and demos.

They follow docs/formats.md: metrics.jsonl (train lines every ``log_every`` steps, eval
lines at log-spaced steps, every ``eval_every`` steps and at the end), run.json and
config.toml. The loss is whatever the caller passes as a function of (tokens, steps).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from oneepoch.rundir import RunDir


def eval_schedule(total_steps: int, eval_every: int) -> np.ndarray:
    """Log-spaced steps (1, 2, 3, 5, 8, ...) up to eval_every, then every eval_every, and
    the final step, as docs/formats.md describes."""
    fib = [1, 2]
    while fib[-1] < min(eval_every, total_steps):
        fib.append(fib[-1] + fib[-2])
    regular = list(range(eval_every, total_steps + 1, eval_every))
    steps = {s for s in fib if s <= total_steps} | set(regular) | {total_steps}
    return np.array(sorted(steps))


def cosine_lr(steps, peak: float, warmup: int, total: int, min_ratio: float = 0.1) -> np.ndarray:
    """Linear warmup to ``peak``, then cosine decay to ``min_ratio * peak`` at ``total``."""
    s = np.asarray(steps, dtype=float)
    progress = np.clip((s - warmup) / max(total - warmup, 1), 0.0, 1.0)
    decay = min_ratio + (1 - min_ratio) * 0.5 * (1 + np.cos(np.pi * progress))
    return peak * np.where(s < warmup, s / max(warmup, 1), decay)


def write_run(
    path: str | Path,
    loss_fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
    *,
    total_steps: int = 2000,
    eval_every: int = 100,
    log_every: int = 10,
    tokens_per_step: int = 8192,
    seconds_per_step: float = 0.05,
    lr: Callable[[np.ndarray], np.ndarray] | None = None,
    warmup_steps: int = 0,
    noise: float = 0.0,
    seed: int = 0,
    epochs: float = 1.0,
    params: int = 1_000_000,
    flops_per_token: float | None = None,
    eval_steps: np.ndarray | None = None,
) -> Path:
    """Write a run whose val_loss is ``loss_fn(tokens, steps)`` times lognormal noise.

    ``epochs`` > 1 makes unique_tokens saturate at tokens / epochs (a repeated run).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lr = lr or (lambda s: np.full(np.shape(s), 1e-3))
    flops_per_token = flops_per_token or 6.0 * params
    total_tokens = total_steps * tokens_per_step
    unique_total = total_tokens / epochs

    evals = eval_schedule(total_steps, eval_every) if eval_steps is None else eval_steps
    train_steps = np.union1d(np.arange(log_every, total_steps + 1, log_every), [1, total_steps])
    eval_tokens = evals * tokens_per_step
    val = loss_fn(eval_tokens.astype(float), evals.astype(float))
    val = val * np.exp(rng.normal(0.0, noise, val.shape)) if noise else val
    val_by_step = dict(zip(evals.tolist(), val.tolist()))

    files = RunDir(path)
    with files.metrics.open("w", encoding="utf-8") as fh:
        for step in np.union1d(train_steps, evals).tolist():
            tokens = step * tokens_per_step
            line = {
                "step": step,
                "tokens": tokens,
                "unique_tokens": min(tokens, unique_total),
                "epoch": tokens / unique_total,
                "lr": float(lr(np.array([step]))[0]),
                "train_loss": float(loss_fn(np.array([tokens]), np.array([step]))[0]) + 0.01,
                "wall_s": step * seconds_per_step,
                "flops": tokens * flops_per_token,
                "kind": "train",
            }
            if step in val_by_step:
                line.update(kind="eval", val_loss=val_by_step[step])
            fh.write(json.dumps(line) + "\n")

    final_val = float(val[-1])
    info = {
        "oneepoch_version": "0.1.0",
        "status": "completed",
        "hardware": {"device": "cpu", "device_name": "synthetic", "cpu_count": 1, "world_size": 1},
        "params": {
            "total": int(params * 1.2),
            "non_embedding": int(params),
            "embedding": int(params * 0.2),
        },
        "flops_per_token": flops_per_token,
        "tokens_per_s": tokens_per_step / seconds_per_step,
        "final": {
            "step": total_steps,
            "tokens": total_tokens,
            "wall_s": total_steps * seconds_per_step,
            "val_loss": final_val,
        },
    }
    files.write_info(info)
    files.write_config(_config_toml(epochs, warmup_steps, total_steps, eval_every, log_every, seed))
    return path


def _config_toml(epochs, warmup_steps, total_steps, eval_every, log_every, seed) -> str:
    """A config.toml as the trainer writes it, for the synthetic run."""
    return (
        "[model]\nn_layer = 2\nn_head = 2\nd_model = 64\nseq_len = 64\nvocab_size = 256\n"
        "dropout = 0.0\n\n"
        f'[data]\npath = "synthetic"\nsampler = "{"one-pass" if epochs == 1 else "repeated"}"\n'
        f"epochs = {float(epochs)}\n\n"
        f"[optim]\nlr = 0.001\nmin_lr_ratio = 0.1\nwarmup_steps = {warmup_steps}\n"
        'schedule = "cosine"\nweight_decay = 0.0\nbeta1 = 0.9\nbeta2 = 0.95\ngrad_clip = 1.0\n\n'
        f"[train]\nbatch_size = 8\ngrad_accum = 1\nsteps = {total_steps}\n"
        f"eval_every = {eval_every}\nlog_every = {log_every}\nseed = {seed}\n"
    )


def power_law(E: float, A: float, alpha: float, x: str = "tokens"):
    """loss_fn for ``write_run``: L = E + A * t^(-alpha), t tokens or steps."""

    def loss(tokens, steps):
        t = tokens if x == "tokens" else steps
        return E + A * np.asarray(t, dtype=float) ** (-alpha)

    return loss


# -- data-constrained scaling laws: rows of (N, D, U, L) from a known law -------------------

# The recovery family of the data-constrained fit (benchmarks/scaling_recovery.py, tests):
# each factor's levels, drawn independently per seed.
REPETITION_FAMILY = {
    "exponents": ("0.28", "0.35", "0.5", "0.3/0.45", "0.45/0.3"),  # alpha (= beta) or a/b
    "R_D_star": (5.0, 15.0, 40.0),
    "R_N_star": (2.0, 5.0, 20.0),
    "grid": ("wide", "sweep", "small"),
    "noise": (0.002, 0.005, 0.015),
}


def repetition_grid(kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, D, U) of a repetition design.

    - ``wide``: six sizes from 2e7 to 1e9 parameters, 5 to 80 tokens per parameter, each
      run at 1, 2, 4, 8, 16, 32 and 64 epochs (210 runs).
    - ``sweep``: `oneepoch sweep --budget 5e11,1e12,2e12 --epochs` on the built-in corpus:
      three IsoFLOP budgets, five sizes from 12.8k to 400k non-embedding parameters (FLOPs per
      token 6 (N + 1.35e5), the output head of a 4,096-token vocabulary), each at 1, 4 and
      16 epochs (45 runs).
    - ``small``: three sizes, 10 to 40 tokens per parameter, 1, 4 and 16 epochs (27 runs).
    """
    rows = []
    if kind == "wide":
        for n in np.geomspace(2e7, 1e9, 6):
            for ratio in (5, 10, 20, 40, 80):
                rows += [(n, ratio * n, ratio * n / e) for e in (1, 2, 4, 8, 16, 32, 64)]
    elif kind == "sweep":
        for flops in (5e11, 1e12, 2e12):
            for n in (12_768, 50_112, 100_096, 198_528, 396_800):
                d = flops / (6 * (n + 1.35e5))
                rows += [(n, d, d / e) for e in (1, 4, 16)]
    elif kind == "small":
        for n in (1e5, 3e5, 1e6):
            for ratio in (10, 20, 40):
                rows += [(n, ratio * n, ratio * n / e) for e in (1, 4, 16)]
    else:
        raise ValueError(f"unknown repetition grid {kind!r}")
    return tuple(np.array(col) for col in zip(*rows))


def draw_repetition_law(seed: int) -> dict:
    """One synthetic data-constrained law and design from its seed: the factors of
    REPETITION_FAMILY and the law's constants. E is uniform in [1.5, 3.5]; A and B make the
    parameter and data terms a share (uniform in [0.2, 0.8]) of E at the design's median
    N and D, so every grid sees losses of realistic size whatever its scale."""
    rng = np.random.default_rng(seed)
    spec = {k: levels[rng.integers(len(levels))] for k, levels in REPETITION_FAMILY.items()}
    alpha, _, beta = spec["exponents"].partition("/")
    alpha = float(alpha)
    beta = float(beta) if beta else alpha
    N, D, _ = repetition_grid(spec["grid"])
    E = float(rng.uniform(1.5, 3.5))
    share_n, share_d = rng.uniform(0.2, 0.8, size=2)
    law = {
        "E": E,
        "A": float(share_n * E * np.median(N) ** alpha),
        "B": float(share_d * E * np.median(D) ** beta),
        "alpha": alpha,
        "beta": beta,
        "R_D_star": float(spec["R_D_star"]),
        "R_N_star": float(spec["R_N_star"]),
    }
    return {**spec, "seed": seed, "law": law}


def repetition_rows(law: dict, grid: str, noise: float, seed: int) -> dict[str, np.ndarray]:
    """{"N", "D", "U", "L"}: ``law`` (data-constrained parameters) on ``grid``, times
    log-normal noise of sd ``noise``."""
    from oneepoch.analysis.scaling import ScalingLaw

    N, D, U = repetition_grid(grid)
    L = ScalingLaw("data-constrained", law).predict(N, D, U)
    L = L * np.exp(np.random.default_rng(seed).normal(0.0, noise, L.size))
    return {"N": N, "D": D, "U": U, "L": L}
