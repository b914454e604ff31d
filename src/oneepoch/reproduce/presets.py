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
Torch-free: the analysis side reads presets to describe a job.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

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
    epochs: tuple[float, ...] = (10.0,)  # experiment 1's multi-epoch baselines
    dropouts: tuple[float, ...] = (0.1, 0.2)  # experiment 2, beside dropout 0
    multi_epoch_dropout: float = 0.1  # the regularised multi-epoch practice (1c)
    budget_fractions: tuple[float, ...] = (0.25, 1.0)  # experiment 4, of experiment 1's compute
    rules: tuple[str, ...] = ("komatsuzaki", "chinchilla")
    segments: int = 5  # each run trains in this many interleaved segments
    eval_every: int = 25
    eval_tokens: int = 16384
    log_every: int = 5
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


PRESETS = {
    "micro": Preset(
        name="micro",
        purpose="continuous integration: every experiment end to end in about a minute",
        n_layer=1,
        n_head=2,
        d_model=64,
        seq_len=64,
        batch_size=8,
        steps=240,
        lr=3e-3,
        warmup_steps=20,
        segments=3,
        eval_every=20,
        eval_tokens=4096,
        power_law_steps=480,
        why="far too small to show the paper's effects reliably; it exercises every step of "
        "the job (interleaving, resume, fits, report) in CI time",
    ),
    "tiny": Preset(
        name="tiny",
        purpose="a 2-core CPU: the whole job in about 10 minutes",
        n_layer=2,
        n_head=2,
        d_model=128,
        seq_len=128,
        batch_size=16,
        steps=500,
        lr=2e-3,
        warmup_steps=20,
        segments=5,
        eval_every=25,
        eval_tokens=16384,
        power_law_steps=1000,
        why="0.94M parameters (0.40M non-embedding) against 1.0M tokens: ten epochs over "
        "102k tokens overfit within a few epochs, and one epoch over 1.0M tokens passes the "
        "multi-epoch runs' best losses well before its last step; experiment 3 continues "
        "the one-epoch run to 1,000 steps, 1.3 decades of tokens after twice its warm-up",
    ),
    "small": Preset(
        name="small",
        purpose="one GPU: the whole job in under an hour",
        n_layer=6,
        n_head=6,
        d_model=384,
        seq_len=256,
        batch_size=64,
        steps=3000,
        lr=1e-3,
        warmup_steps=150,
        epochs=(4.0, 10.0, 30.0),
        budget_fractions=(0.0625, 0.25, 1.0),
        segments=8,
        eval_every=100,
        eval_tokens=65536,
        log_every=10,
        power_law_steps=8000,
        power_law_batch=16,
        power_law_warmup=30,
        why="10.6M non-embedding parameters against 49M tokens, the paper's regime of a "
        "model too large for its data when repeated; needs a corpus of at least 50M tokens; "
        "experiment 3's run takes batches of 16 after a 30-step warm-up, so that 8,000 steps "
        "(33M tokens) span 2.1 decades after twice its warm-up",
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
    return PRESETS[name]
