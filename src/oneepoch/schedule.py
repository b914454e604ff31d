"""Learning-rate schedules: linear warm-up, then cosine, linear or constant."""

from __future__ import annotations

import math

from oneepoch.config import OptimConfig


def warmup_steps(cfg: OptimConfig, total_steps: int | None) -> int:
    if cfg.warmup_steps >= 0:
        return cfg.warmup_steps
    if total_steps is None:
        return 100
    return min(max(10, total_steps // 50), max(1, total_steps // 5))


def lr_at(
    cfg: OptimConfig, step: int, total_steps: int | None, progress: float | None = None
) -> float:
    """Learning rate for optimizer step ``step`` (0-based).

    ``progress`` in [0, 1] replaces step / total_steps for wall-clock budgets, where the
    number of steps is not known in advance.
    """
    warm = warmup_steps(cfg, total_steps)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    if cfg.schedule == "constant":
        return cfg.lr
    if progress is None:
        span = max(1, (total_steps or 1) - warm)
        progress = (step - warm) / span
    progress = min(max(progress, 0.0), 1.0)
    floor = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "linear":
        return floor + (cfg.lr - floor) * (1.0 - progress)
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
