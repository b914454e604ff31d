"""What machine this is, the key of its cached measurements, and the peak FLOP/s that MFU
is measured against.

On known GPUs the peak comes from a table of dense (no-sparsity) datasheet figures per
dtype. Elsewhere (CPUs, unknown GPUs) it is measured: square matmuls in the training dtype
at a few sizes, the best rate kept, cached per machine (``machine_key``) and dtype
(a second or two, once). The matmul rate is what a training step can at best attain, so the
MFU it gives is an honest fraction, not one against a number that no kernel here reaches.
"""

from __future__ import annotations

import os
import platform
import re
import time
from pathlib import Path

import torch

from oneepoch.allocator import keep_freed_memory
from oneepoch.cache import cache_dir, read_entries, store_entry
from oneepoch.errors import UserError

# Of every cached measurement (peaks, dtype choices, throughput): it begins each machine key,
# so raising it retires all of them at once. 2: one key for the three caches.
MEASURE_VERSION = 2

# Dense peak FLOP/s by device-name pattern (first match wins) and dtype. "float32" is the
# TF32 tensor-core peak where the GPU has one, because the trainer enables TF32 for float32
# on CUDA; GPUs without bf16 tensor cores have no "bfloat16" entry (so it gets measured).
GPU_PEAKS: list[tuple[str, dict[str, float]]] = [
    (r"B200", {"bfloat16": 2250e12, "float32": 1125e12}),
    (r"GH200|H200", {"bfloat16": 989e12, "float32": 495e12}),
    (r"H100 NVL", {"bfloat16": 835e12, "float32": 418e12}),
    (r"H100 PCIe", {"bfloat16": 756e12, "float32": 378e12}),
    (r"H100", {"bfloat16": 989e12, "float32": 495e12}),  # SXM ("H100 80GB HBM3")
    (r"A100", {"bfloat16": 312e12, "float32": 156e12}),
    (r"L40S", {"bfloat16": 362e12, "float32": 183e12}),
    (r"L40\b", {"bfloat16": 181e12, "float32": 90.5e12}),
    (r"\bL4\b", {"bfloat16": 121e12, "float32": 60e12}),
    (r"\bA10\b", {"bfloat16": 125e12, "float32": 62.5e12}),
    (r"RTX 4090", {"bfloat16": 165e12, "float32": 82.6e12}),
    (r"RTX 3090", {"bfloat16": 71e12, "float32": 35.6e12}),
    (r"V100", {"float32": 15.7e12}),
    (r"\bT4\b", {"float32": 8.1e12}),
]

MATMUL_SIZES = (512, 1024, 2048, 4096)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def sync(device: torch.device) -> None:
    """Wait for the device's queued work: a timer read after this has timed the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine_key(device: torch.device) -> str:
    """What a cached measurement on ``device`` is valid for: this version of the measuring,
    the device, torch's threads and version, and the allocator setting in effect."""
    return (
        f"v{MEASURE_VERSION}|{device.type}|{device_name(device)}"
        f"|threads={torch.get_num_threads()}|torch={torch.__version__}"
        f"|malloc={keep_freed_memory()}"
    )


def hardware_info(device: torch.device, world_size: int = 1) -> dict:
    return {
        "device": device.type,
        "device_name": device_name(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        # as libgomp read it when torch loaded (oneepoch/__init__.py sets PASSIVE)
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "malloc": keep_freed_memory(),  # what oneepoch/allocator.py put in effect
        "world_size": world_size,
        "platform": platform.platform(),
    }


def gpu_table_peak(name: str, dtype_name: str) -> dict | None:
    """The datasheet peak for a GPU name like "NVIDIA H100 80GB HBM3", or None if unknown."""
    for pattern, peaks in GPU_PEAKS:
        if re.search(pattern, name):
            if dtype_name not in peaks:
                return None
            return {
                "value": peaks[dtype_name],
                "dtype": dtype_name,
                "source": f"table: {pattern} dense {dtype_name} peak",
            }
    return None


def measure_matmul_flops(
    device: torch.device,
    dtype: torch.dtype,
    sizes: tuple[int, ...] = MATMUL_SIZES,
    seconds: float = 1.5,
) -> tuple[float, int]:
    """(best FLOP/s, the size that gave it) over square matmuls of ``dtype``.

    Small sizes under-use the cores and large ones can fall out of cache, so several are
    tried; the best observed rate estimates the attainable peak.
    """

    best, best_size = 0.0, sizes[0]
    for size in sizes:
        a = torch.randn(size, size, device=device).to(dtype)
        b = torch.randn(size, size, device=device).to(dtype)
        a @ b  # warm-up: kernel selection, packing buffers
        deadline = time.perf_counter() + seconds / len(sizes)
        reps = 0
        while reps < 2 or time.perf_counter() < deadline:
            sync(device)
            t0 = time.perf_counter()
            a @ b
            sync(device)
            rate = 2 * size**3 / (time.perf_counter() - t0)
            if rate > best:
                best, best_size = rate, size
            reps += 1
    return best, best_size


def cache_path() -> Path:
    return cache_dir() / "peak_flops.json"


def _peak_key(device: torch.device, dtype_name: str) -> str:
    return f"{machine_key(device)}|{dtype_name}"


def peak_is_known(device: torch.device, dtype_name: str) -> bool:
    """Whether peak_flops answers without measuring (a GPU in the table, or cached)."""
    if device.type == "cuda" and gpu_table_peak(device_name(device), dtype_name):
        return True
    return isinstance(read_entries(cache_path()).get(_peak_key(device, dtype_name)), dict)


def peak_flops(device: torch.device, dtype_name: str) -> dict:
    """{"value", "dtype", "source"}: the per-device FLOP/s that MFU is a fraction of."""
    name = device_name(device)
    if device.type == "cuda":
        found = gpu_table_peak(name, dtype_name)
        if found:
            return found
    key = _peak_key(device, dtype_name)
    entry = read_entries(cache_path()).get(key)
    if not isinstance(entry, dict):
        # CPUs reach their best rate by n=1024 (cached sizes here: 512, 1024); n=4096 would
        # add 200 MB to the memory of a planner that must stay below the run it plans.
        sizes = MATMUL_SIZES if device.type == "cuda" else MATMUL_SIZES[:-1]
        value, size = measure_matmul_flops(device, getattr(torch, dtype_name), sizes)
        entry = {"value": value, "size": size}
        store_entry(cache_path(), key, entry)
    return {
        "value": entry["value"],
        "dtype": dtype_name,
        "source": f"measured: best {dtype_name} square matmul (n={entry['size']}), cached",
    }


def cpu_supports_bf16() -> bool:
    """AMX or AVX512-BF16: the instructions that make bf16 matmuls worth trying on a CPU."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


# bf16 autocast adds casts around every matmul; below this speed-up of the matmuls alone it
# does not pay (AMX gives ~5x; AVX512-BF16 without AMX can even be slower than MKL's fp32).
BF16_MIN_GAIN = 1.5


def cpu_bf16_is_faster() -> bool:
    """Whether bf16 autocast pays on this CPU, judged by the (cached) measured peaks."""
    if not cpu_supports_bf16():
        return False
    cpu = torch.device("cpu")
    return (
        peak_flops(cpu, "bfloat16")["value"] >= BF16_MIN_GAIN * peak_flops(cpu, "float32")["value"]
    )


def gpu_supports_bf16(device: torch.device) -> bool:
    """bf16 tensor cores (Ampere and newer); older GPUs only emulate bf16, slowly."""
    return torch.cuda.get_device_capability(device) >= (8, 0)


# ---------------------------------------------------------------------------------------
# The device of a run: chosen once, here, for the trainer and the planner alike


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto``: this process's CUDA GPU if one is visible, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("device 'cuda' was asked for but no CUDA GPU is visible; use 'cpu'.")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")
