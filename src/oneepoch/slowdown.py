"""Whether a run is being slowed by load on the machine: its throughput against its own.

On a shared machine a run's tokens/s can fall far below what it does alone (another
training on the same cores, say), which would read as a slow method. Each logging interval
whose rate is below ``SLOW_FRACTION`` of the run's median so far counts as slowed; the
progress line says so while it happens and run.json records the share of training time.
"""

from __future__ import annotations

import os
import statistics

SLOW_FRACTION = 0.6
MIN_INTERVALS = 5  # a median of fewer intervals says little about the run's usual rate


def slowed_now(rates: list[float]) -> str:
    """A note for the progress line when the latest interval was slowed, else ""."""
    if len(rates) < MIN_INTERVALS:
        return ""
    typical = statistics.median(rates)
    if rates[-1] >= SLOW_FRACTION * typical:
        return ""
    return f"slowed by load: {rates[-1] / typical:.0%} of this run's median ({_load()})"


def slowed_summary(rates: list[float], seconds: list[float]) -> dict:
    """run.json's record: how much of the training time ran slowed, and the load."""
    typical = statistics.median(rates) if rates else 0.0
    slow = [
        s
        for r, s in zip(rates, seconds)
        if len(rates) >= MIN_INTERVALS and r < SLOW_FRACTION * typical
    ]
    total = sum(seconds)
    return {
        "share_of_time": sum(slow) / total if total else 0.0,
        "intervals": len(slow),
        "of_intervals": len(rates),
        "rule": f"a logging interval below {SLOW_FRACTION:.0%} of the run's median tokens/s",
        "load_average_at_end": round(os.getloadavg()[0], 2),
        "cpu_count": os.cpu_count(),
    }


def _load() -> str:
    return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
