"""oneepoch: train language models one epoch at a time, sized for the budget."""

import os
import sys

__version__ = "0.1.0"

# OpenMP threads that wait for work by spinning hold their core; when another process
# wants the same cores, every parallel region then waits for a thread that is not running
# and both processes slow down tenfold (benchmarks/contention.py). Passive waiting keeps
# each of two trainings at 60-90% of its quiet speed; alone it costs little at the
# benchmark's shapes and 10-25% at the smallest (docs/performance.md, "Under load").
# libgomp reads this once, when torch loads it, so it is set only if torch is not loaded
# yet; an explicit OMP_WAIT_POLICY in the environment wins.
if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Freed activations stay in the process instead of being faulted in again every step.
from oneepoch.allocator import keep_freed_memory  # noqa: E402

keep_freed_memory()
