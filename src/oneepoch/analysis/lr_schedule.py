"""Learning-rate areas for the schedule-aware learning-curve law of Tissue et al. (2024).

    L(s) = L0 + A * S1(s)^(-alpha) - C * S2(s)

S1(s) = sum_{i<=s} eta_i is the forward area: the summed learning rate up to step s.
S2(s) = sum_{i<=s} m_i is the annealing area, with the momentum m_i = lam * m_{i-1} +
(eta_{i-1} - eta_i), i.e. S2 = sum_i sum_{k<=i} (eta_{k-1} - eta_k) * lam^(i-k): each LR
drop keeps lowering the loss for a while after it happens, decaying by lam per step
(lam = 0.999 by default, as in the paper).

Choices of ours, documented in docs/analysis.md:
- eta is normalised by its peak, so S1 counts "steps at peak LR"; this only rescales A
  and C.
- Warmup (steps up to the first peak) adds to S1 but not to S2: a rising LR is not
  annealing, and counting it would make S2 negative.
- metrics.jsonl logs the LR every few steps; the per-step LR is linearly interpolated
  between logged steps (exact when every step is logged), and taken as the first logged
  value before the first logged step.
- Beyond the last logged step the LR is held at its last value: S1 grows linearly and the
  momentum decays geometrically, in closed form.
"""

from __future__ import annotations

import numpy as np

DEFAULT_DECAY = 0.999


class LRSchedule:
    def __init__(self, steps, lr, decay: float = DEFAULT_DECAY):
        steps = np.asarray(steps, dtype=float)
        lr = np.asarray(lr, dtype=float)
        order = np.argsort(steps)
        steps, lr = steps[order], lr[order]
        if steps.size == 0 or not np.all(np.isfinite(lr)) or lr.max() <= 0:
            raise ValueError("need at least one positive, finite learning rate")
        self.decay = decay
        self.peak_lr = float(lr.max())
        self.end = int(max(steps[-1], 1))
        grid = np.arange(1, self.end + 1, dtype=float)
        eta = np.interp(grid, steps, lr) / self.peak_lr

        drop = np.concatenate([[0.0], eta[:-1] - eta[1:]])  # eta_{i-1} - eta_i
        drop[: int(np.argmax(eta)) + 1] = 0.0
        momentum = _momentum(drop, decay)

        # Index 0 is step 0 (before any update), so np.interp works on fractional steps.
        self._s1 = np.concatenate([[0.0], np.cumsum(eta)])
        self._s2 = np.concatenate([[0.0], np.cumsum(momentum)])
        self._eta = eta
        self._eta_end = float(eta[-1])
        self._m_end = float(momentum[-1])

    @property
    def constant(self) -> bool:
        """True when the logged LR never decays (S2 is zero everywhere)."""
        return not np.any(self._s2 > 0)

    def lowest_fraction(self, first_step: float, last_step: float) -> float:
        """The lowest LR, as a fraction of the peak, between the peak and ``last_step``
        (from ``first_step`` on): how much annealing a fit over that range can see."""
        grid = np.arange(self._eta.size, dtype=float) + 1
        lo = max(float(first_step), float(np.argmax(self._eta)) + 1)
        inside = (grid >= lo) & (grid <= float(last_step))
        return float(self._eta[inside].min()) if inside.any() else float(self._eta_end)

    def areas(self, steps) -> tuple[np.ndarray, np.ndarray]:
        """(S1, S2) at (possibly fractional, possibly beyond the log) steps."""
        s = np.asarray(steps, dtype=float)
        grid = np.arange(self._s1.size, dtype=float)
        s1 = np.interp(s, grid, self._s1)
        s2 = np.interp(s, grid, self._s2)
        k = np.maximum(s - self.end, 0.0)
        s1 = s1 + self._eta_end * k
        lam = self.decay
        s2 = s2 + self._m_end * lam * (1.0 - lam**k) / (1.0 - lam)
        return s1, s2


def _momentum(drop: np.ndarray, decay: float) -> np.ndarray:
    """m_i = decay * m_{i-1} + drop_i, vectorised.

    Within a block m_{s+j} = decay^j * (decay * m_{s-1} + sum_{k<=j} drop_{s+k} decay^-k);
    blocks are short enough that decay^-k stays far from overflow.
    """
    block = int(min(max(30.0 / -np.log(decay), 1.0), 1e6))
    out = np.empty_like(drop)
    carry = 0.0
    for start in range(0, drop.size, block):
        seg = drop[start : start + block]
        powers = decay ** np.arange(seg.size)
        out[start : start + seg.size] = powers * (decay * carry + np.cumsum(seg / powers))
        carry = out[start + seg.size - 1]
    return out
