"""Training throughput on this machine, as the planner sees it: measured points, cached,
and an estimate between them.

A point is measured with the trainer's own pieces (``oneepoch.measure.throughput``: its GPT,
AdamW and step, timed on micro-batches, then evaluation and a checkpoint write; on a CPU in
a process of its own). All the measuring of one plan takes at most ``MAX_CALIBRATION_S``;
what is being measured is shown on a terminal. Results are cached in
``~/.cache/oneepoch/throughput.json`` (``$ONEEPOCH_CACHE`` moves it), keyed by the machine
(``oneepoch.measure.machine.machine_key``) and dtype, then by shape and batch.

Shapes not measured get an estimate: achieved FLOP/s interpolated (log-log) against FLOPs
per step over the measured points of this machine, flat past the ends; before anything is
measured, 35% of the matmul peak (``oneepoch.measure.machine.peak_flops``).
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from oneepoch.cache import cache_dir, read_entries, store_entries
from oneepoch.config import DTYPES
from oneepoch.errors import UserError
from oneepoch.flops import Shape, activation_bytes, param_counts, train_flops_per_token
from oneepoch.plan.heuristics import grad_accum
from oneepoch.slowdown import machine_busy

PRIOR_PEAK_FRACTION = 0.35
EVAL_SPEEDUP = 3.0  # evaluation is a forward pass only: ~1/3 of a training step's FLOPs
CHECKPOINT_BYTES_PER_PARAM = 12  # fp32 weights + AdamW's two moments
PRIOR_DISK_BYTES_PER_S = 200e6
MEASURE_SECONDS = 1.0  # timed seconds per measured shape and batch
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

        from oneepoch.measure.dtype import pick_dtype
        from oneepoch.measure.machine import machine_key, peak_is_known

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
        self.machine = f"{machine_key(self.device)}|{self.dtype}"
        self.points: dict[str, dict] = {}
        if not recalibrate:
            self.points = read_entries(self.path, "machines", self.machine)
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

    def _save(self) -> None:
        """Merge this machine's points into the cache file."""
        store_entries(self.path, self.points, "machines", self.machine)

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
            from oneepoch.measure.machine import peak_flops

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
        from oneepoch.measure.throughput import (
            measure_isolated,
            measure_point,
            release_memory,
            start_workers,
        )

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
        accum = grad_accum(batch, shape.seq_len, shape.vocab_size)
        args = (shape, batch, accum, self.device, self.dtype, min(self.seconds, left / 3))
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
            from oneepoch.measure.throughput import stop_workers

            stop_workers()

    def say(self, text: str, end: str = "\n") -> None:
        """What is being measured, on a terminal (stderr): measuring takes seconds."""
        if self.verbose:
            print(text, end=end, file=sys.stderr, flush=True)
