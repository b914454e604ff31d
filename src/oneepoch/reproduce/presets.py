"""Sizes of `oneepoch reproduce`: one preset per kind of machine.

Each preset fixes the baseline model and the length of experiment 1's runs; every other
run is derived from them (same iterations, same compute, a rule's share of that compute).
They were chosen so that the effects the paper reports can show at all:
- the multi-epoch runs must really overfit: E epochs over T/E tokens with a model of about
  as many parameters as T tokens memorises its subset within a few epochs;
- the one-epoch run must really reach their best losses within the same iterations, so the
  speedups are measured, not extrapolated;
- the smaller models the allocation rules choose must exist in the shape grid (the output
  head of a small vocabulary is most of a tiny model's parameters and FLOPs).
The table itself is presets.toml beside this module. Torch-free: the analysis side reads
presets to describe a job.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass
from importlib.resources import files

from oneepoch.errors import UserError


@dataclass(frozen=True)
class Preset:
    name: str
    purpose: str
    # the baseline model: experiment 1's and the size-adjustment's reference
    n_layer: int
    n_head: int
    d_model: int
    seq_len: int
    batch_size: int
    steps: int  # iterations of experiment 1's runs
    lr: float
    warmup_steps: int
    # how the job trains and measures every run
    segments: int = 5  # each run trains in this many interleaved segments
    eval_every: int = 25
    eval_tokens: int = 16384
    log_every: int = 5
    epochs: tuple[float, ...] = (10.0,)  # experiment 1's multi-epoch baselines
    dropouts: tuple[float, ...] = (0.1, 0.2)  # experiment 2, beside dropout 0
    multi_epoch_dropout: float = 0.1  # the regularised multi-epoch practice (1c)
    budget_fractions: tuple[float, ...] = (0.25, 1.0)  # experiment 4, of experiment 1's compute
    rules: tuple[str, ...] = ("komatsuzaki", "chinchilla")
    # Experiment 3's run: one epoch of the baseline model, long enough that its fit (from
    # twice the warm-up, where the warm-up's effect ends) spans the decades the claim
    # needs; batch and warm-up None: the preset's (then experiment 1's one-epoch run is its
    # beginning and costs nothing more).
    power_law_steps: int = 0
    power_law_batch: int | None = None
    power_law_warmup: int | None = None
    why: str = ""

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def power_law_tokens_per_step(self) -> int:
        return (self.power_law_batch or self.batch_size) * self.seq_len

    @property
    def power_law_decades(self) -> float:
        """Decades of tokens from twice the warm-up to the end of experiment 3's run."""
        warmup = self.warmup_steps if self.power_law_warmup is None else self.power_law_warmup
        if not self.power_law_steps or warmup <= 0:
            return 0.0
        return math.log10(self.power_law_steps / (2 * warmup))

    @property
    def tokens(self) -> int:
        return self.steps * self.tokens_per_step

    def to_json(self) -> dict:
        return asdict(self)


def _load_presets() -> dict[str, Preset]:
    tables = tomllib.loads((files("oneepoch.reproduce") / "presets.toml").read_text("utf-8"))
    return {
        name: Preset(
            name=name,
            **{key: tuple(v) if isinstance(v, list) else v for key, v in table.items()},
        )
        for name, table in tables.items()
    }


PRESETS = _load_presets()


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
    return PRESETS[name]
