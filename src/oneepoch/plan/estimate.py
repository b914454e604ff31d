"""Wall-clock of a planned run, from calibrated throughput and the trainer's own schedule.

Two numbers: ``train_s`` is what the run will log as ``wall_s`` (training only, evaluation
and checkpoints excluded, docs/formats.md); ``elapsed_s`` is what the user waits, which adds
process start-up, the untimed warm-up step, every evaluation (the trainer evaluates at
log-spaced steps, every ~5% of the run and at the end) and every checkpoint (~10 a run).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from oneepoch.plan.calibrate import Rate
from oneepoch.schedule import Cadence

STARTUP_S = 3.0  # interpreter, torch import, dataset open: ~2.8 s on a 2-core reference machine
CHECKSUM_BYTES_PER_S = 1e9  # the trainer re-hashes every shard when it opens the dataset


@dataclass
class Estimate:
    train_s: float
    evaluations: int
    eval_s: float  # all evaluations together
    checkpoints: int
    checkpoint_s: float  # all checkpoints together
    warmup_s: float
    startup_s: float
    tokens_per_s: float
    source: str  # where the throughput came from (calibrate.Rate.source)
    busy: bool = False  # that throughput was measured while other work loaded the machine

    @property
    def elapsed_s(self) -> float:
        return self.startup_s + self.warmup_s + self.train_s + self.eval_s + self.checkpoint_s

    def to_json(self) -> dict:
        return {**asdict(self), "elapsed_s": self.elapsed_s}


def evaluation_steps(steps: int, eval_every: int = 0) -> int:
    """How many evaluations the trainer runs in a run of ``steps`` steps."""
    return Cadence(steps, eval_every).evaluations()


def checkpoint_count(steps: int, checkpoint_every: int = 0) -> int:
    return Cadence(steps, checkpoint_every=checkpoint_every).checkpoint_count()


def estimate_run(
    seq_len: int,
    batch: int,
    steps: int,
    rate: Rate,
    val_windows: int,
    data_bytes: int = 0,
    eval_every: int = 0,
    checkpoint_every: int = 0,
) -> Estimate:
    evaluations = evaluation_steps(steps, eval_every)
    checkpoints = checkpoint_count(steps, checkpoint_every)
    return Estimate(
        train_s=steps * rate.step_s,
        evaluations=evaluations,
        eval_s=evaluations * val_windows * seq_len / rate.eval_tokens_per_s,
        checkpoints=checkpoints,
        checkpoint_s=checkpoints * rate.checkpoint_s,
        warmup_s=rate.step_s,
        startup_s=STARTUP_S + data_bytes / CHECKSUM_BYTES_PER_S,
        tokens_per_s=rate.tokens_per_s,
        source=rate.source,
        busy=rate.busy,
    )
