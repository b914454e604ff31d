"""Running the trainer on many processes (torchrun): process group, wrapping, agreement.

One process per device. Rank 0 owns the run directory: it resolves the config, reads the
checkpoint and writes metrics, then tells the other ranks what it decided, so ranks never
race on files (and the run directory need not be on a shared file system). Checkpoints hold
full, unsharded tensors keyed by parameter name, for the model and the optimizer alike, so
a run saved on N ranks, with DDP or FSDP, resumes on any number of ranks.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import torch.nn as nn

from oneepoch.errors import UserError

T = TypeVar("T")


@dataclass
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # we started the process group, so we end it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def from_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 only and give every rank its result (or its UserError)."""
        if not self.active:
            return fn()
        box: list[Any] = [None]
        if self.is_main:
            try:
                box[0] = ("ok", fn())
            except UserError as exc:
                box[0] = ("error", str(exc))
        dist.broadcast_object_list(box, src=0, device=torch.device("cpu"))
        kind, value = box[0]
        if kind == "error":
            raise UserError(value)
        return value

    def agree(self, signum: int, elapsed_s: float) -> tuple[int, float]:
        """(signal, training seconds) that every rank acts on at this step.

        Ranks see a signal at different moments and their clocks differ; deciding to stop
        (or the learning rate of a wall-clock run) on local values would let them diverge.
        A host-side all-reduce over gloo: it does not wait for the accelerator.
        """
        if not self.active:
            return signum, elapsed_s
        msg = torch.tensor([float(signum), elapsed_s if self.is_main else 0.0], dtype=torch.float64)
        dist.all_reduce(msg, op=dist.ReduceOp.MAX)
        return int(msg[0]), float(msg[1])

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of ``x`` over ranks (identity on one rank)."""
        if not self.active:
            return x
        x = x.clone()
        dist.all_reduce(x)
        return x / self.world_size

    def sum_(self, x: torch.Tensor) -> torch.Tensor:
        if self.active:
            dist.all_reduce(x)
        return x

    def barrier(self) -> None:
        if self.active:
            dist.all_reduce(torch.zeros(1))  # over gloo: no device stream involved

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device_kind: str) -> Ranks:
    """Join the process group when launched by torchrun with more than one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    owns = not dist.is_initialized()
    if owns:
        # CPU tensors (control messages, object broadcasts) travel over gloo even when NCCL
        # carries the gradients.
        backend = "cpu:gloo,cuda:nccl" if device_kind == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return Ranks(
        dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), owns
    )


def parallelize(
    model: nn.Module, parallel: str, compile: bool, device: torch.device, ranks: Ranks
) -> nn.Module:
    """The module the training step calls: compiled and/or wrapped for DDP or FSDP2.

    ``model`` keeps its parameter names either way (FSDP2 shards it in place), so state
    dicts taken from it load into a plain GPT.
    """
    if ranks.active and parallel == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(device.type, (ranks.world_size,))
        for block in model.blocks:
            if compile:
                # Compile the block's math but not FSDP's hooks around it (they gather and
                # free the shards); keeps parameter names free of compiler prefixes too.
                block.forward = torch.compile(block.forward)
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)  # embeddings, final norm (and the tied head)
        return model
    train_model = torch.compile(model) if compile else model
    if ranks.active:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        train_model = DistributedDataParallel(train_model, device_ids=ids)
    return train_model


def grad_sync(train_model: nn.Module, enabled: bool):
    """Context for one micro-batch: skip the gradient reduction unless ``enabled``.

    With gradient accumulation only the last micro-batch of a step needs to reduce.
    """
    if hasattr(train_model, "set_requires_gradient_sync"):  # FSDP2
        train_model.set_requires_gradient_sync(enabled)
        return contextlib.nullcontext()
    if hasattr(train_model, "no_sync") and not enabled:  # DDP
        return train_model.no_sync()
    return contextlib.nullcontext()


def clip_grad_norm_(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Clip the global gradient norm without a host-device sync (stays on the device).

    Under FSDP the gradients are shards (DTensors): their norm is reduced over ranks first.
    """
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(model, optimizer) state as full CPU tensors keyed by parameter name.

    Collective under FSDP (every rank must call it); the tensors land on rank 0 only.
    Keys by name, not by the optimizer's parameter index, and unsharded: loadable on any
    number of ranks, with or without FSDP.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_state_dict(model, optimizer, options=opts)


def load_full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, model_sd: dict, optim_sd: dict, ranks: Ranks
) -> None:
    """Load what ``full_state`` saved; under torchrun only rank 0 needs the tensors."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    # Two calls, not set_state_dict: that one skips the model on ranks given an empty dict,
    # which would leave them out of rank 0's broadcast.
    opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=ranks.active)
    set_model_state_dict(model, model_sd, options=opts)
    set_optimizer_state_dict(model, optimizer, optim_sd, options=opts)
