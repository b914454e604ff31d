"""Training throughput on this machine: measured with the trainer's own pieces, cached.

A measurement builds the trainer's GPT and AdamW (``oneepoch.step.build_optimizer``), reads
windows with ``oneepoch.step.read_windows`` from an in-memory split, and times the trainer's
own step (``oneepoch.step``: forward, backward, gradient clipping, AdamW) on micro-batches,
what a run executes between accumulation steps, after an untimed warm-up, in the dtype the
run will use; a step's time is extrapolated from them (see ``measure_point``). Then a few
evaluation forward passes and one checkpoint write (``oneepoch.checkpoint.save``). On a CPU
each measurement runs in a process of its own (``measure_isolated``), so the planner's memory
is never more than one shape's measurement, handed back when it ends. All the measuring of
one plan takes at most ``MAX_CALIBRATION_S``; what is being measured is shown on a
terminal. Results are cached in
``~/.cache/oneepoch/throughput.json`` (``$ONEEPOCH_CACHE`` moves it), keyed by device name,
torch threads, torch version, dtype and allocator setting, then by shape and batch.

Shapes not measured get an estimate: achieved FLOP/s interpolated (log-log) against FLOPs
per step over the measured points of this machine, flat past the ends; before anything is
measured, 35% of the matmul peak (``oneepoch.hardware.peak_flops``).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from oneepoch.allocator import keep_freed_memory
from oneepoch.cache import cache_dir
from oneepoch.config import DTYPES
from oneepoch.errors import UserError
from oneepoch.flops import Shape, activation_bytes, param_counts, train_flops_per_token
from oneepoch.slowdown import CpuShare, machine_busy

PRIOR_PEAK_FRACTION = 0.35
EVAL_SPEEDUP = 3.0  # evaluation is a forward pass only: ~1/3 of a training step's FLOPs
CHECKPOINT_BYTES_PER_PARAM = 12  # fp32 weights + AdamW's two moments
PRIOR_DISK_BYTES_PER_S = 200e6
CACHE_VERSION = 1
NOISY_STEPS = 0.15  # step times varying more than this (std / mean): the machine was busy
MEASURE_SECONDS = 1.0  # timed seconds per measured shape and batch
MIN_TIMED_TOKENS = 4096  # tokens of a timed micro-batch, when the micro-batch has as many
MAX_CALIBRATION_S = 30.0  # all measuring of one Calibration together, whatever the budget


def cache_path() -> Path:
    return cache_dir() / "throughput.json"


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
        seconds: float = MEASURE_SECONDS,
        path: Path | None = None,
        max_seconds: float = MAX_CALIBRATION_S,
        verbose: bool | None = None,
        isolate: bool | None = None,
    ):
        import torch

        from oneepoch.hardware import device_name, peak_is_known, pick_dtype

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.allow_measure, self.seconds = measure, seconds
        self.max_seconds, self._deadline = max_seconds, None
        self.verbose = sys.stderr.isatty() if verbose is None else verbose
        if dtype == "auto" and not all(
            peak_is_known(self.device, d) for d in DTYPES if d != "auto"
        ):
            self.say(f"calibration: timing {self.device.type} matmuls to choose the dtype (once)")
        self.dtype = pick_dtype(dtype, self.device)
        self.path = path or cache_path()
        self.machine = (
            f"{self.device.type}|{device_name(self.device)}|threads={torch.get_num_threads()}"
            f"|torch={torch.__version__}|{self.dtype}|malloc={keep_freed_memory()}"
        )
        self.points: dict[str, dict] = {} if recalibrate else self._load().get(self.machine, {})
        # Points measured on a busy machine are provisional: re-measured once it is quiet.
        self.quiet = not machine_busy(0.2)
        self._prior: float | None = None
        # The most a timed micro-batch may take (oneepoch.flops.activation_bytes): the
        # planner sets that of the run it plans, so timing a larger candidate never takes
        # more memory than that run will (it times fewer sequences and scales).
        self.max_activation_bytes: float | None = None
        # On a CPU each measurement runs in a fresh process (see measure_isolated): its
        # memory goes back when it ends, this one stays as it was, and no shape's timing
        # inherits another's heap. A GPU's caching allocator is emptied between shapes.
        self.threads = torch.get_num_threads()
        self.isolate = self.device.type == "cpu" if isolate is None else isolate

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
        """Measure (shape, batch) and cache it, unless this calibration's time is spent:
        then measuring stops and the rate is estimated from what was measured."""
        key = point_key(shape, batch)
        if self.isolate and self._deadline is None and self.allow_measure:
            start_workers()  # importing torch there once is not measuring time
        now = time.perf_counter()
        if self._deadline is None:
            self._deadline = now + self.max_seconds
        left = self._deadline - now
        if left < 2 * self.seconds:
            if self.allow_measure:
                self.say(f"calibration: {self.max_seconds:g} s spent; the rest is estimated")
            self.allow_measure = False
            return self.rate(shape, batch)
        self.say(f"calibration: timing {key} on {self.device.type} {self.dtype}", end=": ")
        args = (shape, batch, self.device, self.dtype, min(self.seconds, left / 3))
        kwargs = {"limit_s": left, "max_sequences": self.sequences_within(shape)}
        if self.isolate:
            try:
                point = measure_isolated(args, kwargs, self.verbose, self.threads)
            except TimeoutError as exc:
                raise UserError(
                    f"{exc} (was it starved by other work, or did it hang?); the shapes "
                    f"measured so far are kept in {self.path}: run the command again, or "
                    "pass --no-calibrate to plan from estimates."
                ) from None
        else:
            point = measure_point(*args, say=self.say, **kwargs)
            release_memory(self.device)  # each shape's model and batches, before the next
        self.say(f"{point['tokens_per_s']:,.0f} tokens/s")
        self.points[key] = point
        self._save()
        return self.rate(shape, batch)

    def sequences_within(self, shape: Shape) -> int | None:
        """The most sequences of ``shape`` whose activations fit ``max_activation_bytes``."""
        if self.max_activation_bytes is None:
            return None
        return max(1, int(self.max_activation_bytes // activation_bytes(shape, 1)))

    def close(self) -> None:
        """Done measuring for now: end the process measurements are forked from (a later
        measurement starts it again)."""
        if self.isolate:
            stop_workers()

    def say(self, text: str, end: str = "\n") -> None:
        """What is being measured, on a terminal (stderr): measuring takes seconds."""
        if self.verbose:
            print(text, end=end, file=sys.stderr, flush=True)


def release_memory(device=None) -> None:
    """Collect and hand freed heap back to the system (glibc ``malloc_trim``, a GPU's cached
    blocks): measuring shape after shape in one process otherwise ratchets memory up."""
    import ctypes
    import gc

    gc.collect()
    if device is not None and device.type == "cuda":
        import torch

        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the allocator keeps what it keeps


# Imported once by the process measurements are forked from (multiprocessing's forkserver),
# which runs no torch operation itself: a fork of a process that has used OpenMP threads
# hangs in its first parallel region, so forking the planner itself is not safe.
# torch._dynamo is what the first AdamW step imports (sympy and ~800 modules, 1.5 s on a CPU):
# imported there, not in every measurement.
WORKER_PRELOAD = [
    "torch",
    "torch._dynamo",
    "oneepoch.step",
    "oneepoch.checkpoint",
    "oneepoch.plan.calibrate",
]
WORKER_GRACE_S = 120.0  # past the calibration's time left: a measuring process that hangs


def _worker_context():
    """multiprocessing's forkserver, started with torch imported; None where there is none."""
    import multiprocessing

    try:
        ctx = multiprocessing.get_context("forkserver")
    except ValueError:
        return None
    ctx.set_forkserver_preload(WORKER_PRELOAD)
    return ctx


def start_workers() -> None:
    """Start the process measurements are forked from and wait until it has imported torch
    (seconds, not part of any measurement)."""
    ctx = _worker_context()
    if ctx is not None:
        child = ctx.Process(target=_ready)
        child.start()
        child.join()


def _ready() -> None:
    """Nothing: forked once the forkserver has imported WORKER_PRELOAD."""


def stop_workers() -> None:
    """End the process measurements are forked from (it holds torch's ~200 MB), if started.
    It also ends by itself when this process does."""
    from multiprocessing import forkserver

    stop = getattr(forkserver._forkserver, "_stop", None)
    if stop is not None:
        stop()


def _measure_child(conn, args: tuple, kwargs: dict, verbose: bool, threads: int) -> None:
    """measure_point in a forked child; what it measures goes to the terminal (stderr), the
    point back through ``conn``."""
    import signal

    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent ends it on Ctrl-C
    torch.set_num_threads(threads)

    def say(text: str, end: str = "\n") -> None:
        if verbose:
            print(text, end=end, file=sys.stderr, flush=True)

    try:
        conn.send(("ok", measure_point(*args, say=say, **kwargs)))
    except Exception as exc:  # noqa: BLE001 - reported by the parent
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def measure_isolated(args: tuple, kwargs: dict, verbose: bool, threads: int) -> dict:
    """``measure_point(*args, **kwargs)`` in a fresh process, forked from one that has torch
    imported and nothing else done (so starting it takes milliseconds, not an import of
    torch): its peak memory is one shape's, it is handed back when the process ends, and the
    planner's own memory does not grow shape after shape. Where there is no forkserver, in
    this process."""
    ctx = _worker_context()
    if ctx is None:
        point = measure_point(*args, **kwargs)
        release_memory()
        return point
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_measure_child, args=(send, args, kwargs, verbose, threads))
    child.daemon = True
    child.start()
    send.close()
    try:
        if not _answered(receive, child.pid, kwargs.get("limit_s", MAX_CALIBRATION_S)):
            raise TimeoutError("calibration: the measuring process did not answer")
        status, value = receive.recv()
    except EOFError:
        child.join()
        raise RuntimeError(
            f"calibration: the measuring process ended with exit code {child.exitcode} "
            "(out of memory?)"
        ) from None
    except BaseException:  # interrupted: do not leave it measuring
        child.terminate()
        child.join()
        raise
    finally:
        receive.close()
    child.join()
    if status != "ok":
        raise RuntimeError(f"calibration: measuring failed: {value}")
    return value


def _answered(receive, pid: int, limit_s: float) -> bool:
    """Whether the measuring process answers within ``limit_s`` + WORKER_GRACE_S seconds of
    its own time: seconds while it is stopped (Ctrl-Z, SIGSTOP, a suspended machine) do not
    count, so a pause does not end a plan whose measurement is fine."""
    waited, budget = 0.0, limit_s + WORKER_GRACE_S
    while waited < budget:
        if receive.poll(1.0):
            return True
        if not _stopped(pid):
            waited += 1.0
    return False


def _stopped(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False  # no /proc (not Linux): count the time
    return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")


def measure_point(
    shape: Shape,
    batch: int,
    device,
    dtype: str,
    seconds: float = MEASURE_SECONDS,
    say=None,
    limit_s: float = MAX_CALIBRATION_S,
    max_sequences: int | None = None,
) -> dict:
    """Time the trainer's own step pieces for one shape and batch, in a few seconds.

    A step is ``grad_accum`` micro-batches of forward and backward, then clipping and AdamW
    (``oneepoch.step.train_step``). This times micro-batches, not whole steps: ``micro_step``
    on n sequences, and ``train_step`` on one micro-batch of n (the same plus the update),
    where n is the micro-batch, or, below it, a power of two of sequences: at least
    ``MIN_TIMED_TOKENS`` tokens (fewer make a CPU's time per token up to twice as high),
    more while that takes at most half of ``seconds``, fewer where the calibration's time
    (``limit_s`` left) would not allow it. The micro-batch's time is the n sequences' scaled
    in proportion. Then step = grad_accum x micro-batch + update. Evaluation forward passes
    of n sequences are scaled the same way; the checkpoint is written once.

    ``max_sequences`` bounds n, and with it the memory (the activations of n sequences are
    most of it): ``Calibration`` passes as many sequences of this shape as fit the
    activations of the run being planned, so a rule's larger batch or larger model is timed
    on part of its micro-batch and scaled.
    """
    import numpy as np
    import torch

    from oneepoch import checkpoint
    from oneepoch.config import ModelConfig, OptimConfig
    from oneepoch.data.dataset import Split
    from oneepoch.model import GPT
    from oneepoch.plan.heuristics import grad_accum
    from oneepoch.step import autocast, build_optimizer, micro_step, read_windows, train_step

    model_cfg = ModelConfig(
        n_layer=shape.n_layer,
        n_head=shape.n_head,
        d_model=shape.d_model,
        seq_len=shape.seq_len,
        vocab_size=shape.vocab_size,
    )
    torch.manual_seed(0)
    model = GPT(model_cfg).to(device)
    optim = OptimConfig()
    optimizer = build_optimizer(model, optim)
    accum = grad_accum(batch, shape.seq_len, shape.vocab_size)
    micro = batch // accum
    rng = np.random.default_rng(0)
    n_windows = 4 * micro
    token_dtype = np.uint16 if shape.vocab_size <= 65535 else np.uint32
    split = Split(
        [rng.integers(0, shape.vocab_size, n_windows * shape.seq_len + 1).astype(token_dtype)]
    )

    def windows(n: int) -> torch.Tensor:
        return read_windows(split, rng.integers(0, n_windows, n), shape.seq_len).to(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def timed(fn, least: int, span: float) -> list[float]:
        """Times of ``fn()``: at least ``least`` calls, more until ``span`` seconds pass."""
        times, start = [], time.perf_counter()
        while len(times) < least or time.perf_counter() - start < span:
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
        return times

    kw = {"device": device, "dtype": dtype, "grad_clip": optim.grad_clip}

    # Untimed warm-up on a small micro-batch (allocations, kernel selection), then a probe
    # that says how many sequences fit the time.
    def fwd_bwd(x):
        return lambda: micro_step(model, x, accum, dtype)

    cap = micro if max_sequences is None else max(1, min(micro, max_sequences))
    n0 = min(cap, 4)
    x = windows(n0)
    timed(fwd_bwd(x), 1, 0)
    per_sequence = statistics.fmean(timed(fwd_bwd(x), 1, 0)) / n0
    # At least MIN_TIMED_TOKENS (below that a CPU's per-token time is up to twice as high),
    # more while it fits the seconds, fewer if the calibration's time is running out.
    n = n0
    while n < cap and (n * shape.seq_len < MIN_TIMED_TOKENS or 2 * n * per_sequence <= seconds / 2):
        n *= 2
    n = min(n, cap)
    while n > n0 and 5 * n * per_sequence > limit_s:  # 2 untimed steps, 3 timed
        n //= 2
    x = windows(n)
    # Untimed, at the timed size: two whole steps, so AdamW's state exists and the heap has
    # grown to its steady size; a run's later steps fault no memory in (oneepoch/allocator.py).
    for _ in range(2):
        train_step(model, model, optimizer, x[None], 1e-4, **kw)
    if say:
        say(f"{n} of {micro} sequences of a micro-batch, {accum} micro-batches a step", end="; ")
    least = 1 if n * per_sequence > seconds / 4 else 2
    share = CpuShare()
    micro_n = timed(fwd_bwd(x), least, seconds / 3)
    whole = timed(
        lambda: train_step(model, model, optimizer, x[None], 1e-4, **kw), least, seconds / 3
    )
    samples = [micro_n, whole]
    t_n = statistics.fmean(micro_n)  # the mean: a run's wall-clock is a sum of steps
    micro_s = t_n * micro / n  # from MIN_TIMED_TOKENS on, time per token is about flat
    busy = machine_busy(share=share) or any(
        statistics.pstdev(t) > NOISY_STEPS * statistics.fmean(t) for t in samples
    )
    update_s = max(0.0, statistics.fmean(whole) - t_n)
    step_s = accum * micro_s + update_s
    optimizer.zero_grad(set_to_none=True)

    model.eval()  # the trainer evaluates in chunks of the micro-batch, scaled like training
    with torch.no_grad(), autocast(dtype, device):
        forward = timed(lambda: model(x[:, :-1], x[:, 1:]).item(), least, seconds / 6)
    eval_s = statistics.fmean(forward) * micro_s / t_n * accum  # per batch, as the rates are
    model.train()

    with tempfile.TemporaryDirectory(prefix="oneepoch-calibrate-") as tmp:
        start = time.perf_counter()
        checkpoint.save(
            Path(tmp), 1, model.state_dict(), {"optimizer": optimizer.state_dict()}, keep=1
        )
        checkpoint_s = time.perf_counter() - start

    tokens_per_step = batch * shape.seq_len
    fpt = train_flops_per_token(shape)
    return {
        "batch": batch,
        "tokens_per_s": tokens_per_step / step_s,
        "eval_tokens_per_s": tokens_per_step / eval_s,
        "checkpoint_s": checkpoint_s,
        "flops_per_step": fpt * tokens_per_step,
        "flops_per_s": fpt * tokens_per_step / step_s,
        "total_params": param_counts(shape)["total"],
        "timed_steps": len(whole),
        "timed_sequences": n,
        "micro_batch": micro,
        "busy": busy,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
