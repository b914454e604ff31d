"""Whether a run is being slowed by load on the machine: its throughput against its own.

On a shared machine a run's tokens/s can fall far below what it does alone (another
training on the same cores, say), which would read as a slow method. Each logging interval
whose rate is below ``SLOW_FRACTION`` of the run's median so far, or of the rate its step
had when timed on a quiet machine (the ``--dtype auto`` probe), counts as slowed: the
second catches a run slowed from start to end. The progress line says so while it happens
and run.json records the share of training time.
"""

from __future__ import annotations

import os
import resource
import statistics
import time

SLOW_FRACTION = 0.6
MIN_INTERVALS = 5  # a median of fewer intervals says little about the run's usual rate
BUSY_CORES = 0.25  # other processes using more CPU than this while we measure: busy


def slowed_now(rates: list[float], quiet_rate: float | None = None) -> str:
    """A note for the progress line when the latest interval was slowed, else ""."""
    for name, reference in _references(rates, quiet_rate):
        if rates[-1] < SLOW_FRACTION * reference:
            return f"slowed by load: {rates[-1] / reference:.0%} of {name} ({_load()})"
    return ""


def slowed_summary(
    rates: list[float], seconds: list[float], quiet_rate: float | None = None
) -> dict:
    """What run.json records: how much of the training time ran slowed, and the load."""
    limit = SLOW_FRACTION * max((r for _, r in _references(rates, quiet_rate)), default=0.0)
    slow = [s for r, s in zip(rates, seconds) if r < limit]
    total = sum(seconds)
    return {
        "share_of_time": sum(slow) / total if total else 0.0,
        "intervals": len(slow),
        "of_intervals": len(rates),
        "quiet_tokens_per_s": quiet_rate,
        "rule": f"a logging interval below {SLOW_FRACTION:.0%} of the run's median tokens/s "
        "or of its step's speed timed on a quiet machine (the --dtype auto probe)",
        "load_average_at_end": round(os.getloadavg()[0], 2),
        "cpu_count": os.cpu_count(),
    }


def _references(rates: list[float], quiet_rate: float | None) -> list[tuple[str, float]]:
    """The rates a slowed interval is measured against: the step's quiet speed when known,
    and the run's own median once there are enough intervals to know it."""
    if not rates:
        return []
    refs = [("this step's quiet speed", quiet_rate)] if quiet_rate else []
    if len(rates) >= MIN_INTERVALS:
        refs.append(("this run's median", statistics.median(rates)))
    return refs


def _load() -> str:
    return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


# ---------------------------------------------------------------------------------------
# Whether other processes are using the CPU while this one measures (planner, dtype probe)


class CpuShare:
    """CPU time used by other processes while this one measures, in cores (Linux /proc/stat).

    Other work on the same cores slows a multi-threaded step several-fold (threads wait for
    each other's descheduled peers), often before the load average shows it.
    """

    def __init__(self):
        self._start = self._snapshot()

    @staticmethod
    def _snapshot() -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat") as fh:
                fields = [int(v) for v in fh.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        tick = os.sysconf("SC_CLK_TCK")
        usage = resource.getrusage(resource.RUSAGE_SELF)
        used = (sum(fields) - fields[3] - fields[4]) / tick  # all but idle and iowait
        return time.perf_counter(), used, usage.ru_utime + usage.ru_stime

    def others(self) -> float | None:
        end = self._snapshot()
        if self._start is None or end is None or end[0] <= self._start[0]:
            return None
        wall, used, mine = (e - s for e, s in zip(end, self._start))
        return max(0.0, used - mine) / wall


def machine_busy(seconds: float = 0.0, share: CpuShare | None = None) -> bool:
    """Other processes use more than BUSY_CORES of the CPU (measured over ``seconds``, or
    since ``share`` started); without /proc/stat, the load average exceeds the cores."""
    if share is None:
        share = CpuShare()
        time.sleep(seconds)
    others = share.others()
    if others is not None:
        return others > BUSY_CORES
    try:
        return os.getloadavg()[0] > (os.cpu_count() or 1) + 0.5
    except OSError:
        return False
