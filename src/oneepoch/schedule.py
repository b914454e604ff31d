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


# ---------------------------------------------------------------------------------------
# When a run evaluates and checkpoints: one cadence, for the trainer and the planner


def log_spaced_steps(last: int, per_decade: int = 5) -> set[int]:
    """1, 2, 3, 4, 6, 10, 16, 25, 40, 63, 100, ...: evaluation points across decades."""
    out, k = set(), 0
    while (s := round(10 ** (k / per_decade))) <= last:
        out.add(s)
        k += 1
    return out


FINAL_GAP = 0.1  # no periodic checkpoint within this share of an interval before the final


class Cadence:
    """Evaluation at log-spaced early steps, every ``eval_every`` steps (default ~20 a run)
    and at the end; checkpoints every ``checkpoint_every`` (default ~10 a run) and at the
    end, but none a few steps before the final one (within FINAL_GAP of an interval: at
    1520 of 1523 steps it would cost a write and save nothing). ``steps`` is None for a
    wall-clock budget."""

    def __init__(self, steps: int | None, eval_every: int = 0, checkpoint_every: int = 0):
        self.steps = steps
        self.eval_every = eval_every or (max(1, steps // 20) if steps else 100)
        self.checkpoint_every = checkpoint_every or (max(1, steps // 10) if steps else 500)
        self.early = log_spaced_steps(steps or 10**9)

    def evaluates(self, step: int, final: bool = False) -> bool:
        return final or step in self.early or step % self.eval_every == 0

    def checkpoints(self, step: int, final: bool = False) -> bool:
        if final:
            return True
        if step % self.checkpoint_every:
            return False
        return self.steps is None or self.steps - step >= self._final_gap()

    def _final_gap(self) -> int:
        return max(1, int(FINAL_GAP * self.checkpoint_every))

    def evaluations(self) -> int:
        """How many evaluations a run of ``steps`` steps makes."""
        every = set(range(self.eval_every, self.steps + 1, self.eval_every))
        return len(self.early | every | {self.steps})

    def checkpoint_count(self) -> int:
        last = self.steps - self._final_gap()  # periodic ones stop short of the final
        every = set(range(self.checkpoint_every, last + 1, self.checkpoint_every))
        return len(every | {self.steps})
