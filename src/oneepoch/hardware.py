"""What machine this is, and the peak FLOP/s that MFU is measured against.

On CPU the peak is measured: a short square-matmul benchmark per dtype, cached per CPU
model, thread count and torch version (~1 s the first time). On known GPUs it comes from
a table of dense (no-sparsity) vendor peaks; an unknown GPU is measured like a CPU.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

# Dense peak FLOP/s by (name fragment, dtype); checked in order, so specific names first.
GPU_PEAKS: list[tuple[str, dict[str, float]]] = [
    ("H200", {"bfloat16": 989e12, "float32": 67e12}),
    ("H100 PCIe", {"bfloat16": 756e12, "float32": 51e12}),
    ("H100", {"bfloat16": 989e12, "float32": 67e12}),
    ("A100", {"bfloat16": 312e12, "float32": 19.5e12}),
    ("L40S", {"bfloat16": 362e12, "float32": 91.6e12}),
    ("L4", {"bfloat16": 121e12, "float32": 30.3e12}),
    ("A10", {"bfloat16": 125e12, "float32": 31.2e12}),
    ("V100", {"bfloat16": 125e12, "float32": 15.7e12}),  # no bf16: fp16 tensor-core peak
    ("RTX 4090", {"bfloat16": 165e12, "float32": 82.6e12}),
]


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


def hardware_info(device: torch.device, world_size: int = 1) -> dict:
    return {
        "device": device.type,
        "device_name": device_name(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "world_size": world_size,
        "platform": platform.platform(),
    }


def measure_matmul_flops(
    device: torch.device, dtype: torch.dtype, size: int = 1024, seconds: float = 0.5
) -> float:
    """Best observed FLOP/s of a square matmul (the best run estimates the attainable peak)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):  # warm-up: kernel selection, caches
        a @ b
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = max(best, 4 * 2 * size**3 / (time.perf_counter() - t0))
    return best


def _cache_path() -> Path:
    root = Path(os.environ.get("ONEEPOCH_CACHE", Path.home() / ".cache" / "oneepoch"))
    return root / "peak_flops.json"


def peak_flops(device: torch.device, dtype_name: str) -> dict:
    """{"value", "dtype", "source"}: the FLOP/s that MFU is a fraction of."""
    name = device_name(device)
    if device.type == "cuda":
        for fragment, peaks in GPU_PEAKS:
            if fragment in name and dtype_name in peaks:
                return {
                    "value": peaks[dtype_name],
                    "dtype": dtype_name,
                    "source": f"table: {fragment} dense peak",
                }
    key = f"{device.type}|{name}|threads={torch.get_num_threads()}|torch={torch.__version__}|{dtype_name}"
    cache = _cache_path()
    try:
        cached = json.loads(cache.read_text())
    except (OSError, ValueError):
        cached = {}
    if key not in cached:
        value = measure_matmul_flops(device, getattr(torch, dtype_name))
        cached[key] = value
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp")
            tmp.write_text(json.dumps(cached, indent=1))
            tmp.replace(cache)
        except OSError:
            pass  # a read-only home only costs a re-measurement next time
    return {
        "value": cached[key],
        "dtype": dtype_name,
        "source": "measured: best 1024^3 matmul, cached",
    }


def cpu_supports_bf16() -> bool:
    """AMX or AVX512-BF16: bf16 matmuls run faster than fp32 (about 5x with AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags
