"""The timing harness: the trainer's own model, AdamW and step on synthetic tokens.

Both measurements of a training step go through it: ``--dtype auto`` timing a run's step in
each dtype (``oneepoch.measure.dtype``) and the planner timing a shape and batch
(``oneepoch.measure.throughput``). What they time is what a run executes: ``oneepoch.model``'s
GPT, ``oneepoch.step``'s AdamW, ``micro_step`` and ``train_step``, windows read with
``read_windows``. Each timing waits for the device (``machine.sync``) before the clock is
read.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch

from oneepoch.config import ModelConfig, OptimConfig
from oneepoch.data.dataset import Split
from oneepoch.measure.machine import sync
from oneepoch.model import GPT
from oneepoch.step import autocast, build_optimizer, micro_step, read_windows, train_step

LEARNING_RATE = 1e-4  # of the timed updates: any small rate costs the same


class Bench:
    """One model of ``model``'s shape with its AdamW on ``device``, and synthetic windows of
    its vocabulary: ``n_windows`` of them, in memory, read as the trainer reads a split."""

    def __init__(self, model: ModelConfig, device: torch.device, n_windows: int):
        self.cfg, self.device, self.n_windows = model, device, n_windows
        with torch.random.fork_rng(devices=[]):  # the same weights each time; no one's RNG moves
            torch.manual_seed(0)
            self.model = GPT(model).to(device)
        self.optim = OptimConfig()
        self.optimizer = build_optimizer(self.model, self.optim)
        self.rng = np.random.default_rng(0)
        token_dtype = np.uint16 if model.vocab_size <= 65535 else np.uint32
        tokens = self.rng.integers(0, model.vocab_size, n_windows * model.seq_len + 1)
        self.split = Split([tokens.astype(token_dtype)])

    def windows(self, n: int) -> torch.Tensor:
        """(n, seq_len + 1) tokens of randomly chosen windows, on the device."""
        picked = self.rng.integers(0, self.n_windows, n)
        return read_windows(self.split, picked, self.cfg.seq_len).to(self.device)

    def micro_step(self, x: torch.Tensor, grad_accum: int, dtype: str) -> Callable[[], object]:
        """Forward and backward of the micro-batch ``x`` (one of ``grad_accum``)."""
        return lambda: micro_step(self.model, x, grad_accum, dtype)

    def train_step(self, x: torch.Tensor, dtype: str) -> Callable[[], object]:
        """A whole optimizer step on the one micro-batch ``x``: the above plus the update."""
        return lambda: train_step(
            self.model,
            self.model,
            self.optimizer,
            x[None],
            LEARNING_RATE,
            device=self.device,
            dtype=dtype,
            grad_clip=self.optim.grad_clip,
        )

    @contextlib.contextmanager
    def evaluating(self, dtype: str) -> Iterator[None]:
        """The model as the trainer evaluates it: eval mode, no gradients, the run's dtype."""
        self.model.eval()
        try:
            with torch.no_grad(), autocast(dtype, self.device):
                yield
        finally:
            self.model.train()

    def forward(self, x: torch.Tensor) -> Callable[[], object]:
        """A forward pass of ``x`` and its loss (within ``evaluating``: an evaluation)."""
        return lambda: self.model(x[:, :-1], x[:, 1:]).item()

    def once(self, fn: Callable[[], object]) -> float:
        """Seconds of one call of ``fn``, the device's work included."""
        t0 = time.perf_counter()
        fn()
        sync(self.device)
        return time.perf_counter() - t0

    def timed(self, fn: Callable[[], object], least: int, span: float) -> list[float]:
        """Times of ``fn()``: at least ``least`` calls, more until ``span`` seconds pass."""
        times, start = [], time.perf_counter()
        while len(times) < least or time.perf_counter() - start < span:
            times.append(self.once(fn))
        return times
