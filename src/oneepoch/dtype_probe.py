"""``--dtype auto`` on a CPU: time the run's own training step in float32 and in bf16.

A square-matmul benchmark says how fast the big matmuls of a large model can go, but the
small models trained on CPUs spend much of a step elsewhere (attention kernels, softmax,
layer norms, the casts autocast adds), and whether bf16 pays there depends on the shape.
So the choice is made by timing the step itself: the model of the run's shape, its
micro-batch, forward, backward and the AdamW update, in both dtypes, interleaved so that
load elsewhere falls on both, the fastest repeat of each kept. The result is cached per
machine, thread count, torch version and shape class, so a run pays for it once (again
only if it was timed while other processes used the CPU).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from oneepoch.allocator import keep_freed_memory
from oneepoch.cache import cache_dir, read_entries, store_entry
from oneepoch.config import ModelConfig, OptimConfig
from oneepoch.hardware import cpu_name
from oneepoch.slowdown import CpuShare, machine_busy

# bf16 must be this much faster to be chosen: its rounding is a cost worth paying only for
# a clear gain, and a smaller difference is within the noise of a few timed steps.
BF16_MIN_SPEEDUP = 1.05
PROBE_SECONDS = 4.0  # at most this long in all (after one warm-up step per dtype)
MAX_REPEATS = 3


def choose_cpu_dtype(model: ModelConfig, micro_batch: int) -> dict:
    """{"dtype", "float32_s", "bfloat16_s", "provisional"}: the faster dtype for this step."""
    key = _shape_class(model, micro_batch)
    entry = read_entries(_cache()).get(key)
    usable = isinstance(entry, dict) and entry.get("dtype") in ("float32", "bfloat16")
    # A choice timed while other processes used the CPU is provisional: timed again once
    # the machine is quiet (load can favour either dtype).
    if not usable or (entry.get("provisional", True) and not machine_busy(0.2)):
        if sys.stderr.isatty():
            print(
                "--dtype auto: timing this model's step in float32 and bfloat16 (once)",
                file=sys.stderr,
                flush=True,
            )
        share = CpuShare()
        seconds = time_step_dtypes(model, micro_batch)
        ratio = seconds["float32"] / seconds["bfloat16"]
        entry = {
            "dtype": "bfloat16" if ratio >= BF16_MIN_SPEEDUP else "float32",
            "float32_s": seconds["float32"],
            "bfloat16_s": seconds["bfloat16"],
            "provisional": machine_busy(share=share),
        }
        store_entry(_cache(), key, entry)
    return entry


def quiet_tokens_per_s(model: ModelConfig, micro_batch: int, dtype: str) -> float | None:
    """Tokens/s of this step as timed on a quiet machine, or None when it never was."""
    entry = read_entries(_cache()).get(_shape_class(model, micro_batch))
    if not isinstance(entry, dict) or entry.get("provisional", True) or f"{dtype}_s" not in entry:
        return None
    return micro_batch * model.seq_len / entry[f"{dtype}_s"]


def time_step_dtypes(model: ModelConfig, micro_batch: int) -> dict[str, float]:
    """The fastest of up to MAX_REPEATS timed steps in each dtype, in seconds."""
    from oneepoch.model import GPT
    from oneepoch.step import apply_update, build_optimizer, micro_step

    cfg = ModelConfig(**{**vars(model), "dropout": 0.0})
    rng = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.vocab_size, (micro_batch, cfg.seq_len + 1), generator=rng)
    net = GPT(cfg)
    optimizer = build_optimizer(net, OptimConfig())

    def step(dtype: str) -> float:
        t0 = time.perf_counter()
        micro_step(net, tokens, 1, dtype)
        apply_update(net, optimizer, 1e-4, 1.0)
        return time.perf_counter() - t0

    dtypes = ("float32", "bfloat16")
    warm = {d: step(d) for d in dtypes}  # kernel selection, packing buffers, allocator
    best = dict(warm)
    deadline = time.perf_counter() + PROBE_SECONDS
    for _ in range(MAX_REPEATS):
        if time.perf_counter() + sum(best.values()) > deadline:
            break
        for d in dtypes:
            best[d] = min(best[d], step(d))
    return best


def _shape_class(model: ModelConfig, micro_batch: int) -> str:
    shape = f"{model.n_layer}x{model.n_head}x{model.d_model}|seq={model.seq_len}"
    return (
        f"cpu|{cpu_name()}|threads={torch.get_num_threads()}|torch={torch.__version__}"
        f"|{shape}|vocab={model.vocab_size}|micro={micro_batch}|malloc={keep_freed_memory()}"
    )


def _cache() -> Path:
    return cache_dir() / "dtype_choice.json"
