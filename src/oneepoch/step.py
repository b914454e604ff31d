"""The training step and what it needs, shared by the trainer and the planner's calibration.

``train_step`` is the one optimizer step there is: ``grad_accum`` micro-batches of forward
and backward (gradients synchronised over ranks on the last), gradient clipping over all
ranks' shards, AdamW. The planner times its pieces as they are (``micro_step`` and
``apply_update``), so what it measures is what a run executes.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn as nn

from oneepoch.config import OptimConfig
from oneepoch.data.dataset import Split
from oneepoch.distributed import clip_grad_norm_, grad_sync
from oneepoch.model import GPT


def read_windows(split: Split, windows: np.ndarray, seq_len: int) -> torch.Tensor:
    """(n, seq_len + 1) int64 tokens: window i is tokens [i*T, i*T + T + 1)."""
    return torch.from_numpy(np.stack([split.read(int(w) * seq_len, seq_len + 1) for w in windows]))


def build_optimizer(model: GPT, o: OptimConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        model.param_groups(o.weight_decay), lr=o.lr, betas=(o.beta1, o.beta2), fused=True
    )


def autocast(dtype: str, device: torch.device):
    """The context a forward pass runs in: bf16 autocast, or nothing for float32."""
    if dtype == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def micro_step(
    train_model: nn.Module, micro: torch.Tensor, grad_accum: int, dtype: str, last: bool = True
) -> torch.Tensor:
    """Forward and backward of one (n, seq_len + 1) micro-batch; its loss / grad_accum,
    detached. Gradients are synchronised over ranks only when ``last``."""
    with grad_sync(train_model, last), autocast(dtype, micro.device):
        loss = train_model(micro[:, :-1], micro[:, 1:]) / grad_accum
        loss.backward()
    return loss.detach()


def apply_update(model: GPT, optimizer: torch.optim.Optimizer, lr: float, grad_clip: float) -> None:
    """Clip the accumulated gradients, take the AdamW step at ``lr``, clear the gradients."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    if grad_clip > 0:
        clip_grad_norm_(model, grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def train_step(
    model: GPT,
    train_model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: torch.Tensor,
    lr: float,
    *,
    device: torch.device,
    dtype: str,
    grad_clip: float,
) -> torch.Tensor:
    """One optimizer step on a (grad_accum, n, seq_len + 1) batch; returns the mean loss of
    this rank's share, on the device. ``train_model`` is ``model`` as wrapped for ranks."""
    batch = batch.to(device, non_blocking=True)
    accum = batch.shape[0]
    total = torch.zeros((), device=device)
    for k in range(accum):
        total += micro_step(train_model, batch[k], accum, dtype, last=k == accum - 1)
    apply_update(model, optimizer, lr, grad_clip)
    return total
