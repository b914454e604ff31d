"""Training throughput on this machine: measured with the trainer's own pieces, cached.

A measurement builds the trainer's GPT and AdamW (``oneepoch.train.build_optimizer``), reads
batches of windows with ``oneepoch.train.read_windows`` from an in-memory split, and times
whole optimizer steps (forward, backward, gradient clipping, AdamW) for about a second after
an untimed warm-up, in the dtype the run will use; then a few evaluation forward passes and
one checkpoint write (``oneepoch.checkpoint.save``). Results are cached in
``~/.cache/oneepoch/throughput.json`` (``$ONEEPOCH_CACHE`` moves it), keyed by device name,
torch threads, torch version and dtype, then by shape and batch.

Shapes not measured get an estimate: achieved FLOP/s interpolated (log-log) against FLOPs
per step over the measured points of this machine, flat past the ends; before anything is
measured, 35% of the matmul peak (``oneepoch.hardware.peak_flops``).
"""

from __future__ import annotations

import json
import math
import os
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from oneepoch.flops import Shape, param_counts, train_flops_per_token

PRIOR_PEAK_FRACTION = 0.35
EVAL_SPEEDUP = 3.0  # evaluation is a forward pass only: ~1/3 of a training step's FLOPs
CHECKPOINT_BYTES_PER_PARAM = 12  # fp32 weights + AdamW's two moments
PRIOR_DISK_BYTES_PER_S = 200e6
CACHE_VERSION = 1
NOISY_STEPS = 0.15  # step times varying more than this (std / mean): the machine was busy
BUSY_CORES = 0.25  # other processes using more CPU than this while we measure: busy


def cache_path() -> Path:
    root = Path(os.environ.get("ONEEPOCH_CACHE") or Path.home() / ".cache" / "oneepoch")
    return root / "throughput.json"


def point_key(shape: Shape, batch: int) -> str:
    s = shape
    return f"L{s.n_layer}-H{s.n_head}-d{s.d_model}-T{s.seq_len}-V{s.vocab_size}-B{batch}"


def shape_key(shape: Shape) -> str:
    return point_key(shape, 0).rsplit("-B", 1)[0]


@dataclass
class Rate:
    """What one step of (shape, batch) costs here."""

    step_s: float
    tokens_per_s: float
    eval_tokens_per_s: float
    checkpoint_s: float
    source: str  # "measured", "measured at batch B", "interpolated", "prior"
    busy: bool = False  # measured while the machine was busy with other work


class Calibration:
    """Throughput on one device and dtype: cached measurements plus an interpolating model."""

    def __init__(
        self,
        device: str = "auto",
        dtype: str = "auto",
        *,
        measure: bool = True,
        recalibrate: bool = False,
        seconds: float = 1.0,
        path: Path | None = None,
    ):
        import torch

        from oneepoch.hardware import device_name
        from oneepoch.train import pick_dtype

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.allow_measure, self.seconds = measure, seconds
        self.path = path or cache_path()
        self.machine = (
            f"{self.device.type}|{device_name(self.device)}|threads={torch.get_num_threads()}"
            f"|torch={torch.__version__}|{self.dtype}"
        )
        self.points: dict[str, dict] = {} if recalibrate else self._load().get(self.machine, {})
        # Points measured on a busy machine are provisional: re-measured once it is quiet.
        self.quiet = not machine_busy(0.2)
        self._prior: float | None = None

    # -- cache ---------------------------------------------------------------------------

    def _load(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
            return {}
        return data.get("machines", {})

    def _save(self) -> None:
        machines = self._load()  # merge: another process may have added points meanwhile
        machines.setdefault(self.machine, {}).update(self.points)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"version": CACHE_VERSION, "machines": machines}, indent=1))
            tmp.replace(self.path)
        except OSError:
            pass  # a read-only home only costs a re-measurement next time

    # -- queries -------------------------------------------------------------------------

    def has(self, shape: Shape, batch: int) -> bool:
        """Measured, and not on a busy machine when this one is quiet."""
        point = self.points.get(point_key(shape, batch))
        return point is not None and not (point.get("busy") and self.quiet)

    def _usable(self) -> dict[str, dict]:
        """Points to trust: the quiet ones, unless every point was measured on a busy machine
        (a disturbed measurement can be several times too slow; interpolating between quiet
        ones is closer to what a quiet machine will do)."""
        quiet = {k: p for k, p in self.points.items() if not p.get("busy")}
        return quiet or self.points

    def rate(self, shape: Shape, batch: int) -> Rate:
        tokens_per_step = batch * shape.seq_len
        points = self._usable()
        point = points.get(point_key(shape, batch))
        if point is not None:
            return self._from_point(point, tokens_per_step, "measured")
        same = [
            (abs(math.log(p["batch"] / batch)), p)
            for k, p in points.items()
            if k.rsplit("-B", 1)[0] == shape_key(shape)
        ]
        if same:
            # tokens/s of the same shape at another batch: closer than any interpolation
            p = min(same, key=lambda t: t[0])[1]
            return self._from_point(p, tokens_per_step, f"measured at batch {p['batch']}")
        return self.model_rate(
            train_flops_per_token(shape), param_counts(shape)["total"], batch, shape.seq_len
        )

    def model_rate(
        self, flops_per_token: float, total_params: float, batch: int, seq_len: int
    ) -> Rate:
        """The interpolated rate of a model of this cost and size, measured or not."""
        tokens_per_step = batch * seq_len
        flops_per_s, source = self._interpolated_flops_per_s(flops_per_token * tokens_per_step)
        tokens_per_s = flops_per_s / flops_per_token
        return Rate(
            step_s=tokens_per_step / tokens_per_s,
            tokens_per_s=tokens_per_s,
            eval_tokens_per_s=tokens_per_s * self._eval_speedup(),
            checkpoint_s=self._checkpoint_model(total_params),
            source=source,
        )

    def _from_point(self, p: dict, tokens_per_step: int, source: str) -> Rate:
        return Rate(
            step_s=tokens_per_step / p["tokens_per_s"],
            tokens_per_s=p["tokens_per_s"],
            eval_tokens_per_s=p["eval_tokens_per_s"],
            checkpoint_s=p["checkpoint_s"],
            source=source,
            busy=bool(p.get("busy")),
        )

    def _interpolated_flops_per_s(self, flops_per_step: float) -> tuple[float, str]:
        pts = sorted(
            (math.log(p["flops_per_step"]), math.log(p["flops_per_s"]))
            for p in self._usable().values()
        )
        if not pts:
            return self.prior_flops_per_s(), "prior"
        x = math.log(flops_per_step)
        if x <= pts[0][0]:
            return math.exp(pts[0][1]), "interpolated"
        if x >= pts[-1][0]:
            return math.exp(pts[-1][1]), "interpolated"
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            if x0 <= x <= x1:
                y = y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
                return math.exp(y), "interpolated"
        return math.exp(pts[-1][1]), "interpolated"  # unreachable: x lies within the points

    def prior_flops_per_s(self) -> float:
        if self._prior is None:
            from oneepoch.hardware import peak_flops

            self._prior = PRIOR_PEAK_FRACTION * peak_flops(self.device, self.dtype)["value"]
        return self._prior

    def _eval_speedup(self) -> float:
        ratios = [p["eval_tokens_per_s"] / p["tokens_per_s"] for p in self._usable().values()]
        return statistics.median(ratios) if ratios else EVAL_SPEEDUP

    def _checkpoint_model(self, total_params: float) -> float:
        size = CHECKPOINT_BYTES_PER_PARAM * total_params
        rates = [
            CHECKPOINT_BYTES_PER_PARAM * p["total_params"] / p["checkpoint_s"]
            for p in self._usable().values()
            if p["checkpoint_s"] > 0
        ]
        return size / (statistics.median(rates) if rates else PRIOR_DISK_BYTES_PER_S)

    # -- measuring -----------------------------------------------------------------------

    def measure(self, shape: Shape, batch: int) -> Rate:
        point = measure_point(shape, batch, self.device, self.dtype, self.seconds)
        key = point_key(shape, batch)
        self.points[key] = point
        self._save()
        return self.rate(shape, batch)


class CpuShare:
    """CPU time used by other processes while this one measures, in cores (Linux /proc/stat).

    Other work on the same cores slows a multi-threaded step several-fold (threads wait for
    each other's descheduled peers), often before the load average shows it.
    """

    def __init__(self):
        self._start = self._snapshot()

    @staticmethod
    def _snapshot() -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat") as fh:
                fields = [int(v) for v in fh.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        tick = os.sysconf("SC_CLK_TCK")
        usage = resource.getrusage(resource.RUSAGE_SELF)
        used = (sum(fields) - fields[3] - fields[4]) / tick  # all but idle and iowait
        return time.perf_counter(), used, usage.ru_utime + usage.ru_stime

    def others(self) -> float | None:
        end = self._snapshot()
        if self._start is None or end is None or end[0] <= self._start[0]:
            return None
        wall, used, mine = (e - s for e, s in zip(end, self._start))
        return max(0.0, used - mine) / wall


def machine_busy(seconds: float = 0.0, share: CpuShare | None = None) -> bool:
    """Other processes use more than BUSY_CORES of the CPU (measured over ``seconds``, or
    since ``share`` started); without /proc/stat, the load average exceeds the cores."""
    if share is None:
        share = CpuShare()
        time.sleep(seconds)
    others = share.others()
    if others is not None:
        return others > BUSY_CORES
    try:
        return os.getloadavg()[0] > (os.cpu_count() or 1) + 0.5
    except OSError:
        return False


def measure_point(shape: Shape, batch: int, device, dtype: str, seconds: float = 1.0) -> dict:
    """Time the trainer's training step, evaluation and checkpoint for one shape and batch."""
    import contextlib

    import numpy as np
    import torch

    from oneepoch import checkpoint
    from oneepoch.config import ModelConfig, RunConfig
    from oneepoch.data.dataset import Split
    from oneepoch.model import GPT
    from oneepoch.plan.heuristics import grad_accum
    from oneepoch.train import build_optimizer, read_windows

    cfg = RunConfig()
    cfg.model = ModelConfig(
        n_layer=shape.n_layer,
        n_head=shape.n_head,
        d_model=shape.d_model,
        seq_len=shape.seq_len,
        vocab_size=shape.vocab_size,
    )
    torch.manual_seed(0)
    model = GPT(cfg.model).to(device)
    optimizer = build_optimizer(model, cfg, device)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if dtype == "bfloat16"
        else contextlib.nullcontext()
    )
    rng = np.random.default_rng(0)
    n_windows = 4 * batch
    token_dtype = np.uint16 if shape.vocab_size <= 65535 else np.uint32
    split = Split(
        [rng.integers(0, shape.vocab_size, n_windows * shape.seq_len + 1).astype(token_dtype)]
    )

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    accum = grad_accum(batch, shape.seq_len, shape.vocab_size)

    def train_step() -> None:
        x = read_windows(split, rng.integers(0, n_windows, batch), shape.seq_len).to(device)
        for group in optimizer.param_groups:
            group["lr"] = 1e-4
        for micro in x.view(accum, batch // accum, -1):
            with autocast:
                loss = model(micro[:, :-1], micro[:, 1:]) / accum
                loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    train_step()  # untimed: allocations, kernel selection
    sync()
    slow = time.perf_counter() - t0 > seconds  # a big model: time fewer steps
    if not slow:
        train_step()
        sync()
    times, start, share = [], time.perf_counter(), CpuShare()
    while True:
        t0 = time.perf_counter()
        train_step()
        sync()
        times.append(time.perf_counter() - t0)
        if len(times) >= (2 if slow else 5) and time.perf_counter() - start >= seconds:
            break
    step_s = statistics.fmean(times)  # the mean: a run's wall-clock is a sum of steps
    # Contended cores make step times erratic, even when the load average has not caught up.
    busy = machine_busy(share=share) or statistics.pstdev(times) > NOISY_STEPS * step_s

    model.eval()  # the trainer evaluates in chunks of the micro-batch
    x = read_windows(split, np.arange(batch // accum), shape.seq_len).to(device)
    with torch.no_grad(), autocast:
        model(x[:, :-1], x[:, 1:])
        sync()
        evals, start = 0, time.perf_counter()
        while evals < 3 or time.perf_counter() - start < seconds / 2:
            model(x[:, :-1], x[:, 1:]).item()
            evals += 1
        eval_s = (time.perf_counter() - start) / evals
    model.train()

    with tempfile.TemporaryDirectory(prefix="oneepoch-calibrate-") as tmp:
        start = time.perf_counter()
        checkpoint.save(
            Path(tmp), 1, model.state_dict(), {"optimizer": optimizer.state_dict()}, keep=1
        )
        checkpoint_s = time.perf_counter() - start

    tokens_per_step = batch * shape.seq_len
    fpt = train_flops_per_token(shape)
    eval_s = eval_s * accum  # per batch of windows, as the rates are
    return {
        "batch": batch,
        "tokens_per_s": tokens_per_step / step_s,
        "eval_tokens_per_s": tokens_per_step / eval_s,
        "checkpoint_s": checkpoint_s,
        "flops_per_step": fpt * tokens_per_step,
        "flops_per_s": fpt * tokens_per_step / step_s,
        "total_params": param_counts(shape)["total"],
        "timed_steps": len(times),
        "busy": busy,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
