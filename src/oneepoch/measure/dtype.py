"""The compute dtype of a run; ``--dtype auto`` on a CPU times the run's own step in both.

A square-matmul benchmark says how fast the big matmuls of a large model can go, but the
small models trained on CPUs spend much of a step elsewhere (attention kernels, softmax,
layer norms, the casts autocast adds), and whether bf16 pays there depends on the shape.
So the choice is made by timing the step itself (``oneepoch.measure.harness``): the model of
the run's shape, its micro-batch, forward, backward and the AdamW update, in both dtypes,
interleaved so that load elsewhere falls on both, the fastest repeat of each kept. The
result is cached per machine (``machine_key``) and shape class, so a run pays for it once
(again only if it was timed while other processes used the CPU).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from oneepoch.cache import cache_dir, read_entries, store_entry
from oneepoch.config import ModelConfig
from oneepoch.measure import machine
from oneepoch.slowdown import CpuShare, machine_busy

# bf16 must be this much faster to be chosen: its rounding is a cost worth paying only for
# a clear gain, and a smaller difference is within the noise of a few timed steps.
BF16_MIN_SPEEDUP = 1.05
PROBE_SECONDS = 4.0  # at most this long in all (after one warm-up step per dtype)
MAX_REPEATS = 3


def pick_dtype(
    name: str, device: torch.device, model: ModelConfig | None = None, micro_batch: int = 0
) -> str:
    """The compute dtype: "auto" means bf16 autocast where it makes training faster.

    GPUs: bf16 tensor cores (Ampere on). CPUs with bf16 instructions: given the run's model
    and micro-batch, its own training step timed in both dtypes (``choose_cpu_dtype``,
    cached); without them (the planner, before it has chosen a shape), the measured matmul
    peaks.
    """
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bfloat16" if machine.gpu_supports_bf16(device) else "float32"
    if not machine.cpu_supports_bf16():
        return "float32"  # bf16 would be emulated: never faster
    if model is not None and micro_batch > 0:
        return choose_cpu_dtype(model, micro_batch)["dtype"]
    return "bfloat16" if machine.cpu_bf16_is_faster() else "float32"


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
    from oneepoch.measure.harness import Bench  # the model and step: only when timing

    bench = Bench(ModelConfig(**{**vars(model), "dropout": 0.0}), torch.device("cpu"), micro_batch)
    x = bench.windows(micro_batch)
    step = {d: bench.train_step(x, d) for d in ("float32", "bfloat16")}
    warm = {d: bench.once(fn) for d, fn in step.items()}  # kernels, packing buffers, allocator
    best = dict(warm)
    deadline = time.perf_counter() + PROBE_SECONDS
    for _ in range(MAX_REPEATS):
        if time.perf_counter() + sum(best.values()) > deadline:
            break
        for d, fn in step.items():
            best[d] = min(best[d], bench.once(fn))
    return best


def _shape_class(model: ModelConfig, micro_batch: int) -> str:
    shape = f"{model.n_layer}x{model.n_head}x{model.d_model}|seq={model.seq_len}"
    cpu = machine.machine_key(torch.device("cpu"))
    return f"{cpu}|{shape}|vocab={model.vocab_size}|micro={micro_batch}"


def _cache() -> Path:
    return cache_dir() / "dtype_choice.json"
