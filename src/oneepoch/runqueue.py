"""Training a list of runs: the one driver behind `oneepoch sweep` and `oneepoch reproduce`.

A queue is a list of runs, each a name, a run directory and the trainer's settings. Training
it skips the runs that are complete, resumes the others from their last checkpoint, and,
when asked, trains the runs of a group interleaved in K segments: round r takes every run of
the group to step ceil(r x steps / K) (the trainer's ``until_step`` pauses it there, exact
resume continues it), so load on the machine lands on all the runs that are compared by
wall-clock alike. Groups (reproduce's seeds) train one after another. A kill at any moment
leaves every finished run complete and the others resumable: the same queue trained again
continues where it stopped.

What trains a round's segments is the caller's choice (oneepoch.launch): this process, one
segment after another (``train_here``; under torchrun every rank of the job runs this driver
in step, rank 0 deciding from the run directories), or child processes pinned to device
slots, several segments at a time. Torch-free until a segment trains.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from oneepoch.atomic import write_atomic
from oneepoch.errors import UserError
from oneepoch.rundir import RunDir
from oneepoch.units import format_seconds

QUEUE_FORMAT = "oneepoch-queue"


@dataclass(frozen=True)
class QueuedRun:
    name: str  # how progress and messages name it, e.g. "seed0/one-epoch"
    out: Path  # its run directory
    config: dict  # the trainer's settings, shaped as RunConfig.to_dict()
    steps: int  # optimizer steps of the whole run
    flops: float  # its training FLOPs: the job's ETA before the run has trained
    group: int = 0  # runs of a group interleave; groups train one after another

    def to_json(self) -> dict:
        return {**asdict(self), "out": str(self.out)}

    @classmethod
    def from_json(cls, d: dict) -> QueuedRun:
        return cls(**{**d, "out": Path(d["out"])})


@dataclass(frozen=True)
class Segment:
    """Train ``run`` from where it stands to step ``until``; ``resume``: it has started."""

    run: QueuedRun
    until: int
    resume: bool

    @property
    def until_step(self) -> int | None:
        """The trainer's ``until_step``: None for a segment that finishes the run."""
        return None if self.until >= self.run.steps else self.until


@dataclass
class RunQueue:
    label: str  # the progress line's first word: "sweep", "reproduce"
    folder: Path  # the job's folder: queue.json and logs/ when processes train it
    runs: list[QueuedRun]
    segments: int = 1  # K: each run of a group trains in K interleaved segments
    show: bool = True  # the job's progress line
    trainer_progress: bool = False  # each trainer's own line too (one run at a time)

    @property
    def path(self) -> Path:
        return self.folder / "queue.json"

    def write(self) -> Path:
        """queue.json: what processes other than this one read to train the queue."""
        data = {
            "format": QUEUE_FORMAT,
            "version": 1,
            **{k: v for k, v in asdict(self).items() if k not in ("folder", "runs")},
            "folder": str(self.folder.resolve()),
            "runs": [r.to_json() for r in self.runs],
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, (json.dumps(data, indent=1) + "\n").encode())
        return self.path

    @classmethod
    def read(cls, path: Path) -> RunQueue:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            raise UserError(f"{path} is missing or damaged; run the command again.") from None
        if not isinstance(data, dict) or data.get("format") != QUEUE_FORMAT:
            raise UserError(f"{path} is not a queue of runs written by oneepoch.")
        runs = [QueuedRun.from_json(r) for r in data.pop("runs")]
        for key in ("format", "version"):
            data.pop(key)
        return cls(**{**data, "folder": Path(data["folder"]), "runs": runs})

    def run(self, name: str) -> QueuedRun:
        return next(r for r in self.runs if r.name == name)

    def states(self) -> dict[str, tuple[str, int]]:
        """{name: (status, step)} as the run directories say now."""
        return {r.name: RunDir(r.out).status() for r in self.runs}


class Stopped(Exception):
    """A signal stopped the queue; every run was checkpointed where it stood."""

    def __init__(self, signum: int, detail: str = ""):
        what = detail or f"{signal.Signals(signum).name} received"
        super().__init__(
            f"{what}; every finished run is kept and the others continue from their last "
            "checkpoint: run the same command again to continue."
        )
        self.signum = signum


@dataclass
class Outcome:
    complete_before: list[str]  # runs that were complete before this invocation
    failed: dict[str, str] = field(default_factory=dict)  # run -> why (device slots only)


# Trains a round's segments, showing them on the progress line; returns {run: why} of
# the runs that failed (an executor that cannot go on without them raises instead).
Executor = Callable[[list[Segment], "QueueProgress"], dict[str, str]]


def plan_rounds(queue: RunQueue, states: dict[str, tuple[str, int]]) -> list[list[Segment]]:
    """The rounds that train what is left, from the runs' ``states``, group by group."""
    rounds: list[list[Segment]] = []
    started = {r.name: states[r.name][0] != "new" for r in queue.runs}
    k = queue.segments
    for group in dict.fromkeys(r.group for r in queue.runs):
        todo = [r for r in queue.runs if r.group == group and states[r.name][0] != "completed"]
        for i in range(1, k + 1):
            now = []
            for run in todo:
                until = run.steps if i == k else math.ceil(i * run.steps / k)
                if states[run.name][1] >= until:
                    continue  # a run paused further on by an earlier invocation
                now.append(Segment(run, until, resume=started[run.name]))
                started[run.name] = True
            if now:
                rounds.append(now)
    return rounds


def train_queue(queue: RunQueue, execute: Executor, ranks=None, where: str = "") -> Outcome:
    """Train what is left of ``queue``, round after round, through ``execute``.

    ``ranks`` (oneepoch.distributed.Ranks): every rank of a torchrun job calls this in step;
    rank 0 reads the run directories and tells the others, and alone shows progress.
    ``where`` names the devices on the progress line ("2 ranks").
    """
    states = ranks.from_main(queue.states) if ranks is not None else queue.states()
    main = ranks is None or ranks.is_main
    progress = QueueProgress(queue, states, where, enabled=queue.show and main)
    failed: dict[str, str] = {}
    try:
        for segments in plan_rounds(queue, states):
            failed.update(execute([s for s in segments if s.run.name not in failed], progress))
    finally:
        progress.close()
    done = [name for name, (status, _) in states.items() if status == "completed"]
    return Outcome(done, failed)


def train_here(segments: list[Segment], progress: QueueProgress) -> dict[str, str]:
    """Train the segments in this process, one after another (under torchrun: on every rank
    of the job's process group, which the trainer joins)."""
    from oneepoch.config import RunConfig
    from oneepoch.train import Interrupted, train

    for seg in segments:
        progress.starting(seg)
        began = time.perf_counter()
        try:
            train(
                RunConfig.from_dict(seg.run.config, seg.run.name),
                seg.run.out,
                resume=seg.resume,
                show_progress=progress.queue.trainer_progress,
                until_step=seg.until_step,
            )
        except Interrupted as exc:
            raise Stopped(exc.signum, f"{seg.run.name}: {exc}") from None
        progress.finished(seg, time.perf_counter() - began)
    return {}


class QueueProgress:
    """One line for the whole queue: runs done / total, what trains where, the job's ETA.

    The ETA uses each run's measured seconds per step once it has trained a segment, and
    before that the FLOPs of its steps at the queue's measured seconds per FLOP; with
    several slots training at once it is divided by their number.
    """

    def __init__(self, queue: RunQueue, states: dict, where: str = "", enabled: bool = True):
        self.queue, self.where = queue, where
        self.enabled, self.tty = enabled, sys.stderr.isatty()
        self.runs = {r.name: r for r in queue.runs}
        # where each run stands (its step), and what this invocation trained of it, in what time
        self.done_steps = {
            n: (self.runs[n].steps if s == "completed" else max(0, step))
            for n, (s, step) in states.items()
        }
        self.trained = dict.fromkeys(self.runs, 0)
        self.seconds = dict.fromkeys(self.runs, 0.0)
        self.training: dict[str, str] = {}  # run -> where it trains now
        self.failed: set[str] = set()
        self.parallel = 1
        self.started = time.perf_counter()

    def starting(self, seg: Segment, slot: str = "") -> None:
        self.training[seg.run.name] = f"{seg.run.name} to step {seg.until}/{seg.run.steps}" + (
            f" on {slot}" if slot else ""
        )
        self._show()

    def finished(self, seg: Segment, seconds: float) -> None:
        name = seg.run.name
        self.seconds[name] += seconds
        self.trained[name] += max(0, seg.until - self.done_steps[name])
        self.done_steps[name] = seg.until
        self.training.pop(name, None)
        if self.parallel > 1:
            self._show()

    def failed_run(self, seg: Segment) -> None:
        self.failed.add(seg.run.name)
        self.training.pop(seg.run.name, None)
        self._show()

    def eta(self) -> float | None:
        spent = sum(self.seconds.values())
        flops_done = sum(
            self.runs[n].flops / self.runs[n].steps * t for n, t in self.trained.items()
        )
        if spent <= 0 or flops_done <= 0:
            return None
        per_flop, left = spent / flops_done, 0.0
        for name, run in self.runs.items():
            remaining = 0 if name in self.failed else run.steps - self.done_steps[name]
            if self.trained[name] > 0:
                left += remaining * self.seconds[name] / self.trained[name]
            else:
                left += remaining * run.flops / run.steps * per_flop
        return left / self.parallel

    def line(self) -> str:
        total = len(self.runs)
        done = sum(self.done_steps[n] >= r.steps for n, r in self.runs.items())
        eta = self.eta()
        parts = [f"{self.queue.label}: {done}/{total} runs done"]
        if self.failed:
            parts[0] += f", {len(self.failed)} failed"
        if self.training:
            parts.append(", ".join(self.training.values()))
        if self.where:
            parts.append(self.where)
        parts.append(
            f"job ETA {format_seconds(eta) if eta is not None else '?'} "
            f"(elapsed {format_seconds(time.perf_counter() - self.started)})"
        )
        return "; ".join(parts)

    def _show(self) -> None:
        if not self.enabled:
            return
        text = self.line()
        # On a terminal, one redrawn line, unless each trainer draws its own below it.
        redraw = self.tty and not self.queue.trainer_progress
        sys.stderr.write("\r\x1b[2K" + text[:200] if redraw else text + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.tty and not self.queue.trainer_progress:
            sys.stderr.write("\n")
