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

    with (path / "metrics.jsonl").open("w", encoding="utf-8") as fh:
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
    (path / "run.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    config = (
        "[model]\nn_layer = 2\nn_head = 2\nd_model = 64\nseq_len = 64\nvocab_size = 256\n"
        "dropout = 0.0\n\n"
        f'[data]\npath = "synthetic"\nsampler = "{"one-pass" if epochs == 1 else "repeated"}"\n'
        f"epochs = {float(epochs)}\n\n"
        f"[optim]\nlr = 0.001\nmin_lr_ratio = 0.1\nwarmup_steps = {warmup_steps}\n"
        'schedule = "cosine"\nweight_decay = 0.0\nbeta1 = 0.9\nbeta2 = 0.95\ngrad_clip = 1.0\n\n'
        f"[train]\nbatch_size = 8\ngrad_accum = 1\nsteps = {total_steps}\n"
        f"eval_every = {eval_every}\nlog_every = {log_every}\nseed = {seed}\n"
    )
    (path / "config.toml").write_text(config, encoding="utf-8")
    return path


def power_law(E: float, A: float, alpha: float, x: str = "tokens"):
    """loss_fn for ``write_run``: L = E + A * t^(-alpha), t tokens or steps."""

    def loss(tokens, steps):
        t = tokens if x == "tokens" else steps
        return E + A * np.asarray(t, dtype=float) ** (-alpha)

    return loss
