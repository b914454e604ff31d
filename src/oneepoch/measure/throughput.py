"""The planner's measurement of one shape and batch: the trainer's step, timed.

``measure_point`` times the trainer's own step pieces through the harness
(``oneepoch.measure.harness``) on micro-batches, what a run executes between accumulation
steps, after an untimed warm-up, in the dtype the run will use; a step's time is
extrapolated from them. Then a few evaluation forward passes and one checkpoint write
(``oneepoch.checkpoint.save``). On a CPU each measurement runs in a process of its own
(``measure_isolated``), so the planner's memory is never more than one shape's measurement,
handed back when it ends. ``oneepoch.plan.calibrate`` decides what to measure and caches it.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from oneepoch.flops import Shape, param_counts, train_flops_per_token
from oneepoch.slowdown import CpuShare, machine_busy

if TYPE_CHECKING:
    from oneepoch.measure.harness import Bench

NOISY_STEPS = 0.15  # step times varying more than this (std / mean): the machine was busy
MIN_TIMED_TOKENS = 4096  # tokens of a timed micro-batch, when the micro-batch has as many


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
    "oneepoch.measure.throughput",
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
        if not _answered(receive, child.pid, kwargs["limit_s"]):
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
    accum: int,
    device,
    dtype: str,
    seconds: float,
    say=None,
    *,
    limit_s: float,
    max_sequences: int | None = None,
) -> dict:
    """Time the trainer's own step pieces for one shape and batch, in a few seconds.

    A step is ``accum`` micro-batches of forward and backward, then clipping and AdamW
    (``oneepoch.step.train_step``). This times micro-batches, not whole steps: ``micro_step``
    on n sequences, and ``train_step`` on one micro-batch of n (the same plus the update),
    where n is the micro-batch, or, below it, a power of two of sequences (``_sequences``).
    The micro-batch's time is the n sequences' scaled in proportion. Then step = accum x
    micro-batch + update. Evaluation forward passes of n sequences are scaled the same way;
    the checkpoint is written once.

    ``max_sequences`` bounds n, and with it the memory (the activations of n sequences are
    most of it): ``Calibration`` passes as many sequences of this shape as fit the
    activations of the run being planned, so a rule's larger batch or larger model is timed
    on part of its micro-batch and scaled.
    """
    # The model and the step are imported where a point is measured (the forked process on
    # a CPU), not by the planner, which imports this module to start that process.
    from oneepoch.config import ModelConfig
    from oneepoch.measure.harness import Bench

    model = ModelConfig(**asdict(shape))
    micro = batch // accum
    bench = Bench(model, device, n_windows=4 * micro)
    cap = micro if max_sequences is None else max(1, min(micro, max_sequences))
    n, per_sequence = _sequences(bench, accum, dtype, cap, seconds, limit_s)
    x = bench.windows(n)
    # Untimed, at the timed size: two whole steps, so AdamW's state exists and the heap has
    # grown to its steady size; a run's later steps fault no memory in (oneepoch/allocator.py).
    for _ in range(2):
        bench.train_step(x, dtype)()
    if say:
        say(f"{n} of {micro} sequences of a micro-batch, {accum} micro-batches a step", end="; ")
    least = 1 if n * per_sequence > seconds / 4 else 2
    step = _time_step(bench, x, accum, dtype, least, seconds)
    micro_s = step["micro_n_s"] * micro / n  # from MIN_TIMED_TOKENS on, time per token is flat
    step_s = accum * micro_s + step["update_s"]
    bench.optimizer.zero_grad(set_to_none=True)
    # the trainer evaluates in chunks of the micro-batch, scaled like training
    with bench.evaluating(dtype):
        forward = bench.timed(bench.forward(x), least, seconds / 6)
    eval_s = statistics.fmean(forward) * micro_s / step["micro_n_s"] * accum  # per batch

    tokens_per_step = batch * shape.seq_len
    fpt = train_flops_per_token(shape)
    return {
        "batch": batch,
        "tokens_per_s": tokens_per_step / step_s,
        "eval_tokens_per_s": tokens_per_step / eval_s,
        "checkpoint_s": _time_checkpoint(bench),
        "flops_per_step": fpt * tokens_per_step,
        "flops_per_s": fpt * tokens_per_step / step_s,
        "total_params": param_counts(shape)["total"],
        "timed_steps": step["timed_steps"],
        "timed_sequences": n,
        "micro_batch": micro,
        "busy": step["busy"],
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _sequences(bench: Bench, accum: int, dtype: str, cap: int, seconds: float, limit_s: float):
    """(n, seconds per sequence): how many sequences (at most ``cap``) to time. An untimed
    warm-up on a small micro-batch (allocations, kernel selection), then a probe of the time
    per sequence; n is at least MIN_TIMED_TOKENS tokens (below that a CPU's per-token time is
    up to twice as high), more while it takes at most half of ``seconds``, fewer if the
    calibration's time (``limit_s`` left) is running out."""
    n0 = min(cap, 4)
    fwd_bwd = bench.micro_step(bench.windows(n0), accum, dtype)
    bench.timed(fwd_bwd, 1, 0)
    per_sequence = statistics.fmean(bench.timed(fwd_bwd, 1, 0)) / n0
    seq_len = bench.cfg.seq_len
    n = n0
    while n < cap and (n * seq_len < MIN_TIMED_TOKENS or 2 * n * per_sequence <= seconds / 2):
        n *= 2
    n = min(n, cap)
    while n > n0 and 5 * n * per_sequence > limit_s:  # 2 untimed steps, 3 timed
        n //= 2
    return n, per_sequence


def _time_step(bench: Bench, x, accum: int, dtype: str, least: int, seconds: float) -> dict:
    """The micro-batch ``x`` timed alone and as a whole step: its mean seconds, the update's,
    and whether the machine was busy meanwhile (load elsewhere, or noisy times)."""
    share = CpuShare()
    micro_n = bench.timed(bench.micro_step(x, accum, dtype), least, seconds / 3)
    whole = bench.timed(bench.train_step(x, dtype), least, seconds / 3)
    t_n = statistics.fmean(micro_n)  # the mean: a run's wall-clock is a sum of steps
    busy = machine_busy(share=share) or any(
        statistics.pstdev(t) > NOISY_STEPS * statistics.fmean(t) for t in (micro_n, whole)
    )
    update_s = max(0.0, statistics.fmean(whole) - t_n)
    return {"micro_n_s": t_n, "update_s": update_s, "timed_steps": len(whole), "busy": busy}


def _time_checkpoint(bench: Bench) -> float:
    """Seconds to write one checkpoint of the model and its AdamW state."""
    from oneepoch import checkpoint

    with tempfile.TemporaryDirectory(prefix="oneepoch-calibrate-") as tmp:
        start = time.perf_counter()
        state = {"optimizer": bench.optimizer.state_dict()}
        checkpoint.save(Path(tmp), 1, bench.model.state_dict(), state, keep=1)
        return time.perf_counter() - start
