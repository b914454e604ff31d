"""Speed machinery: peak FLOP/s lookup and cache, dtype choice, prefetch, no per-step sync,
and bf16 autocast learning as well as fp32."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from helpers import SRC
from oneepoch.analysis.runs import FORECAST_KIND
from oneepoch.measure import machine as hardware
from oneepoch.measure.machine import gpu_table_peak


@pytest.mark.parametrize(
    ("name", "dtype", "value"),
    [
        ("NVIDIA H100 80GB HBM3", "bfloat16", 989e12),
        ("NVIDIA H100 80GB HBM3", "float32", 495e12),  # TF32: the trainer enables it
        ("NVIDIA H100 PCIe", "bfloat16", 756e12),
        ("NVIDIA H100 NVL", "bfloat16", 835e12),
        ("NVIDIA H200", "bfloat16", 989e12),
        ("NVIDIA GH200 480GB", "bfloat16", 989e12),
        ("NVIDIA A100-SXM4-80GB", "bfloat16", 312e12),
        ("NVIDIA A100-PCIE-40GB", "float32", 156e12),
        ("NVIDIA A10", "bfloat16", 125e12),
        ("NVIDIA L4", "bfloat16", 121e12),
        ("NVIDIA L40S", "bfloat16", 362e12),
        ("NVIDIA L40", "bfloat16", 181e12),
        ("NVIDIA GeForce RTX 4090", "bfloat16", 165e12),
        ("Tesla V100-SXM2-16GB", "float32", 15.7e12),
    ],
)
def test_gpu_peaks_come_from_the_table_by_name_and_dtype(name, dtype, value):
    peak = gpu_table_peak(name, dtype)
    assert peak["value"] == value and peak["dtype"] == dtype
    assert peak["source"].startswith("table")


@pytest.mark.parametrize(
    ("name", "dtype"),
    [
        ("NVIDIA A10G", "bfloat16"),  # not an A10 (nor an A100): measured instead
        ("Tesla V100-SXM2-16GB", "bfloat16"),  # no bf16 tensor cores
        ("Some Future GPU", "float32"),
    ],
)
def test_gpus_without_a_table_entry_are_not_guessed(name, dtype):
    assert gpu_table_peak(name, dtype) is None


@pytest.fixture
def fake_measure(monkeypatch, tmp_path):
    """Measurements recorded instead of run; the cache in a temporary directory."""
    monkeypatch.setenv("ONEEPOCH_CACHE", str(tmp_path / "cache"))
    calls = []

    def measure(device, dtype, *args, **kwargs):
        calls.append(dtype)
        return (5e12 if dtype == torch.bfloat16 else 1e12), 2048

    monkeypatch.setattr(hardware, "measure_matmul_flops", measure)
    return calls


def test_known_gpu_uses_the_table_and_unknown_gpu_is_measured(fake_measure, monkeypatch):
    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(hardware, "device_name", lambda device: "NVIDIA L4")
    assert hardware.peak_flops(gpu, "bfloat16")["value"] == 121e12
    assert fake_measure == []
    monkeypatch.setattr(hardware, "device_name", lambda device: "Some Future GPU")
    peak = hardware.peak_flops(gpu, "bfloat16")
    assert peak["value"] == 5e12 and peak["source"].startswith("measured")
    assert fake_measure == [torch.bfloat16]  # measured in the dtype asked for


def test_measured_peak_is_cached_per_dtype(fake_measure):
    cpu = torch.device("cpu")
    first = hardware.peak_flops(cpu, "bfloat16")
    assert hardware.peak_flops(cpu, "bfloat16") == first  # from the cache
    assert fake_measure == [torch.bfloat16]
    assert hardware.peak_flops(cpu, "float32")["value"] == 1e12
    assert fake_measure == [torch.bfloat16, torch.float32]
    cached = json.loads(hardware.cache_path().read_text())
    assert sorted(k.rsplit("|", 1)[1] for k in cached) == ["bfloat16", "float32"]
    assert all(f"threads={torch.get_num_threads()}" in k for k in cached)
    assert "n=2048" in first["source"]


def test_a_damaged_or_unwritable_cache_only_costs_a_measurement(fake_measure, monkeypatch):
    cpu = torch.device("cpu")
    hardware.cache_path().parent.mkdir(parents=True)
    hardware.cache_path().write_text("{not json")
    assert hardware.peak_flops(cpu, "float32")["value"] == 1e12
    monkeypatch.setenv("ONEEPOCH_CACHE", "/proc/no-such-dir")  # cannot be created
    assert hardware.peak_flops(cpu, "float32")["value"] == 1e12


def test_matmul_benchmark_runs_in_the_dtype_and_reports_its_best_size():
    rate, size = hardware.measure_matmul_flops(
        torch.device("cpu"), torch.bfloat16, sizes=(32, 64), seconds=0.05
    )
    assert rate > 0 and size in (32, 64)


@pytest.mark.parametrize(("bf16", "fp32", "faster"), [(5e12, 1e12, True), (1e12, 2e12, False)])
def test_auto_dtype_on_cpu_follows_the_measured_matmul_speed(monkeypatch, bf16, fp32, faster):
    from oneepoch.measure.dtype import pick_dtype

    monkeypatch.setattr(hardware, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(
        hardware,
        "peak_flops",
        lambda device, dtype: {"value": bf16 if dtype == "bfloat16" else fp32},
    )
    assert hardware.cpu_bf16_is_faster() is faster
    cpu = torch.device("cpu")
    assert pick_dtype("auto", cpu) == ("bfloat16" if faster else "float32")
    assert pick_dtype("float32", cpu) == "float32"
    monkeypatch.setattr(hardware, "cpu_supports_bf16", lambda: False)
    assert not hardware.cpu_bf16_is_faster()


def test_auto_dtype_on_cpu_times_the_runs_own_step_and_caches_it(monkeypatch, tmp_path):
    from oneepoch.config import ModelConfig
    from oneepoch.measure import dtype as dtype_probe
    from oneepoch.measure.dtype import pick_dtype

    monkeypatch.setenv("ONEEPOCH_CACHE", str(tmp_path))
    monkeypatch.setattr(hardware, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(dtype_probe, "machine_busy", lambda *a, **k: False)  # a quiet machine
    cpu = torch.device("cpu")
    model = ModelConfig(n_layer=1, n_head=2, d_model=32, seq_len=16, vocab_size=64)
    chosen = pick_dtype("auto", cpu, model, 4)
    entry = json.loads((tmp_path / "dtype_choice.json").read_text())
    (recorded,) = entry.values()
    assert recorded["float32_s"] > 0 and recorded["bfloat16_s"] > 0
    faster = recorded["float32_s"] / recorded["bfloat16_s"] >= dtype_probe.BF16_MIN_SPEEDUP
    assert chosen == recorded["dtype"] == ("bfloat16" if faster else "float32")

    def no_second_measurement(*args):
        raise AssertionError("the cached choice was measured again")

    monkeypatch.setattr(dtype_probe, "time_step_dtypes", no_second_measurement)
    assert pick_dtype("auto", cpu, model, 4) == chosen
    # another shape class is its own measurement; the recorded timings decide, not a table
    monkeypatch.setattr(
        dtype_probe, "time_step_dtypes", lambda m, b: {"float32": 1.0, "bfloat16": 0.5}
    )
    assert pick_dtype("auto", cpu, ModelConfig(**{**vars(model), "d_model": 64}), 4) == "bfloat16"
    monkeypatch.setattr(
        dtype_probe, "time_step_dtypes", lambda m, b: {"float32": 1.0, "bfloat16": 0.99}
    )
    assert pick_dtype("auto", cpu, model, 8) == "float32"  # 1% is not worth bf16's rounding
    assert pick_dtype("float32", cpu, model, 4) == "float32"
    # a choice timed on a busy machine is provisional: timed again once it is quiet
    monkeypatch.setattr(dtype_probe, "machine_busy", lambda *a, **k: "share" in k)
    wide = ModelConfig(**{**vars(model), "d_model": 128})
    monkeypatch.setattr(
        dtype_probe, "time_step_dtypes", lambda m, b: {"float32": 1.0, "bfloat16": 0.5}
    )
    assert pick_dtype("auto", cpu, wide, 4) == "bfloat16"
    assert dtype_probe.quiet_tokens_per_s(wide, 4, "bfloat16") is None
    monkeypatch.setattr(
        dtype_probe, "time_step_dtypes", lambda m, b: {"float32": 1.0, "bfloat16": 2.0}
    )
    assert pick_dtype("auto", cpu, wide, 4) == "float32"  # re-timed on the quiet machine
    monkeypatch.setattr(dtype_probe, "machine_busy", lambda *a, **k: False)
    assert dtype_probe.quiet_tokens_per_s(wide, 4, "float32") is None  # still marked busy
    assert dtype_probe.quiet_tokens_per_s(model, 8, "float32") == pytest.approx(8 * 16 / 1.0)
    monkeypatch.setattr(hardware, "cpu_supports_bf16", lambda: False)
    assert pick_dtype("auto", cpu, ModelConfig(**{**vars(model), "d_model": 96}), 4) == "float32"


@pytest.mark.parametrize(
    ("capability", "dtype"), [((7, 0), "float32"), ((8, 0), "bfloat16"), ((9, 0), "bfloat16")]
)
def test_auto_dtype_on_gpus_needs_bf16_tensor_cores(monkeypatch, capability, dtype):
    from oneepoch.measure.dtype import pick_dtype

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert pick_dtype("auto", torch.device("cuda", 0)) == dtype  # V100: emulated bf16 is slow


def test_prefetcher_returns_exactly_what_the_step_builds():
    from oneepoch.prefetch import Prefetcher

    built = []

    def build(step):
        built.append(step)
        return torch.full((2, 3), step)

    fetch = Prefetcher(build, stop=5, device=torch.device("cpu"))
    try:
        got = [int(fetch.get(s)[0, 0]) for s in (0, 1, 2, 4, 3, 4)]  # a jump, then back
    finally:
        fetch.close()
    assert got == [0, 1, 2, 4, 3, 4]
    assert max(built) == 4  # never builds past the last step


@pytest.fixture
def one_thread():
    """Tiny models on a shared 2-core machine: one thread does not stall on a busy core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _train(data, out, dtype, steps=80, seed=0):
    from oneepoch.config import RunConfig
    from oneepoch.train import train

    cfg = RunConfig()
    cfg.update(
        {
            "model": {"n_layer": 2, "n_head": 2, "d_model": 64, "seq_len": 64},
            "data": {"path": str(data)},
            "train": {
                "steps": steps,
                "batch_size": 16,
                "eval_tokens": 8192,
                "dtype": dtype,
                "seed": seed,
                "log_every": 10,
            },
            "forecast": {"live": False},
        }
    )
    shutil.rmtree(out, ignore_errors=True)
    return train(cfg, out, show_progress=False)


def test_no_host_device_sync_per_step(byte_dataset, tmp_path, monkeypatch, one_thread):
    """Values come back to the host only for a log line or an evaluation, never per step."""
    calls = []
    item = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda self: calls.append(1) or item(self))
    _train(byte_dataset, tmp_path / "run", "float32", steps=40)
    records = map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
    lines = [r for r in records if r["kind"] != FORECAST_KIND]  # the forecast's own records
    evals = sum("val_loss" in line for line in lines)
    assert len(calls) == len(lines) + evals


def test_bf16_autocast_reaches_the_fp32_validation_loss(byte_dataset, tmp_path, one_thread):
    """Within the seed-to-seed spread of this setup (~0.03 nats at 80 steps)."""
    fp32 = _train(byte_dataset, tmp_path / "fp32", "float32")
    bf16 = _train(byte_dataset, tmp_path / "bf16", "bfloat16")
    assert bf16["dtype"] == "bfloat16" and bf16["peak_flops"]["dtype"] == "bfloat16"
    assert fp32["final"]["val_loss"] < 3.2  # learned (from ~5.5)
    assert bf16["final"]["val_loss"] == pytest.approx(fp32["final"]["val_loss"], abs=0.03)


def test_intervals_well_below_the_runs_median_are_reported_as_slowed_by_load():
    from oneepoch.slowdown import SLOW_FRACTION, slowed_now, slowed_summary

    steady = [1000.0, 1010.0, 990.0, 1005.0, 995.0, 1000.0]
    assert slowed_now(steady) == ""
    assert slowed_now(steady[:3] + [100.0]) == ""  # too few intervals to know the usual rate
    note = slowed_now([*steady, 250.0])
    assert note.startswith("slowed by load: 25% of this run's median") and "load average" in note
    # the share is of training time: a slow interval of 10 steps lasts 4x a fast one's
    rates = [*steady, 250.0, 260.0]
    seconds = [1.0] * 6 + [4.0, 4.0]
    summary = slowed_summary(rates, seconds)
    assert summary["intervals"] == 2 and summary["of_intervals"] == 8
    assert summary["share_of_time"] == pytest.approx(8.0 / 14.0)
    just_above = [*steady, SLOW_FRACTION * 1000.0 * 1.01]
    assert slowed_summary(just_above, [1.0] * 7)["intervals"] == 0
    # A run slowed from start to end has a low median too: its step's quiet speed (from the
    # dtype probe) tells it apart, from the first interval on.
    assert slowed_now([300.0], quiet_rate=1000.0).startswith("slowed by load: 30% of this step")
    whole = slowed_summary([300.0] * 8, [1.0] * 8, quiet_rate=1000.0)
    assert whole["share_of_time"] == 1.0 and whole["quiet_tokens_per_s"] == 1000.0
    assert slowed_summary([900.0] * 8, [1.0] * 8, quiet_rate=1000.0)["intervals"] == 0


# A few training steps of a tiny model in a fresh process: its page faults per step, and the
# allocator setting oneepoch put in effect (run.json's hardware.malloc).
FAULTS_PER_STEP = """
import resource, torch
import oneepoch
from oneepoch.config import ModelConfig, OptimConfig
from oneepoch.model import GPT
from oneepoch.step import build_optimizer, train_step

torch.manual_seed(0)
model = GPT(ModelConfig(n_layer=1, n_head=2, d_model=64, seq_len=128, vocab_size=512))
optimizer = build_optimizer(model, OptimConfig())
batch = torch.randint(0, 512, (1, 16, 129))
kw = dict(device=torch.device("cpu"), dtype="float32", grad_clip=1.0)
for _ in range(3):
    train_step(model, model, optimizer, batch, 1e-3, **kw)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    train_step(model, model, optimizer, batch, 1e-3, **kw)
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10
print(faults, "|", oneepoch.allocator.keep_freed_memory())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_training_steps_do_not_fault_their_memory_in_again():
    """With oneepoch imported, a step reuses the memory the previous one freed (no page
    faults); with glibc's own thresholds (an explicit MALLOC_*_ setting wins) it faults its
    activations in every step."""

    def run(**extra) -> tuple[float, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUN"))}
        env.update(PYTHONPATH=str(SRC), OMP_NUM_THREADS="1", **extra)
        out = subprocess.run(
            [sys.executable, "-c", FAULTS_PER_STEP],
            capture_output=True, text=True, env=env, timeout=120, check=True,
        ).stdout  # fmt: skip
        faults, state = out.strip().split(" | ")
        return float(faults), state

    kept, kept_state = run()
    default, default_state = run(MALLOC_TOP_PAD_="131072")  # glibc's default top pad
    assert (
        kept_state.startswith("glibc: mmap above 32 MiB")
        and default_state == "from the environment"
    )
    # a few stray faults (the interpreter, thread stacks) against thousands a step
    assert kept < 200 and default > 20 * max(kept, 50), (kept, default)
