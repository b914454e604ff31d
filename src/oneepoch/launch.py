"""Where the runs of a queue (oneepoch.runqueue) train: here, on the ranks of one torchrun
job, or spread over device slots, one pinned process per slot.

- ``Here``: this process, one segment after another, as `oneepoch train` run after run.
- ``Torchrun`` (``--nproc-per-node N``; for several nodes also ``--nnodes``, ``--node-rank``,
  ``--master-addr``, ``--master-port``, the same command on every node): one torchrun job for
  the whole queue. Every rank runs the queue's driver in step (oneepoch.runworker) and trains
  each segment together with the others, the run's global batch split over them, exactly as
  `torchrun ... oneepoch train` does. One job rather than one per segment: torch starts, the
  ranks meet, the dataset is hashed and compiled code is built once per job, and nodes need
  not meet again for every segment. Rank 0 (node 0's first process) reads and writes the run
  directories.
- ``Slots`` (``--devices cuda:0,cuda:1`` or ``cpu:0-3,cpu:4-7``): independent runs at once, one
  child process per slot, pinned to its GPU (CUDA_VISIBLE_DEVICES) or its CPU cores
  (sched_setaffinity, and as many OpenMP threads as cores); each run's output goes to
  FOLDER/logs/RUN.log, and a run that fails is reported while the others go on.

The children of this process stop with it: SIGINT or SIGTERM here is passed on to them (they
checkpoint and exit), and on Linux they are sent SIGTERM if this process is killed outright.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from oneepoch.errors import UserError
from oneepoch.runqueue import (
    Outcome,
    QueueProgress,
    RunQueue,
    Segment,
    Stopped,
    train_here,
    train_queue,
)

WORKER = [sys.executable, "-m", "oneepoch.runworker"]


class Here:
    """This process, one segment after another."""

    node_rank = 0

    def run(self, queue: RunQueue) -> Outcome:
        return train_queue(queue, train_here)

    def describe(self) -> str:
        return "each run in this process, one at a time"

    def placement(self, seconds: dict[str, float]) -> dict[str, str]:
        return dict.fromkeys(seconds, "here")


@dataclass(frozen=True)
class Torchrun:
    """One torchrun job whose ranks train the queue together."""

    nproc: int
    nnodes: int
    node_rank: int
    master_addr: str | None
    master_port: int
    device_kind: str  # cuda, cpu or auto: what the ranks' process group is for

    @property
    def ranks(self) -> int:
        return self.nproc * self.nnodes

    def describe(self) -> str:
        nodes = f" ({self.nproc} per node on {self.nnodes} nodes)" if self.nnodes > 1 else ""
        return (
            f"each run on {self.ranks} ranks{nodes} of one torchrun job, its batch split over "
            "them, one run at a time"
        )

    def placement(self, seconds: dict[str, float]) -> dict[str, str]:
        return dict.fromkeys(seconds, f"{self.ranks} ranks")

    def torchrun_args(self) -> list[str]:
        if self.nnodes == 1:
            where = ["--standalone"]
        else:  # static: node 0 holds rank 0, so the run directories are written there
            where = [
                *("--nnodes", str(self.nnodes), "--node-rank", str(self.node_rank)),
                *("--master-addr", str(self.master_addr), "--master-port", str(self.master_port)),
            ]
        return [*where, "--nproc-per-node", str(self.nproc)]

    def check(self, queue: RunQueue) -> None:
        """Refuse, before anything starts, a run whose micro-batch cannot be split evenly
        over the ranks (the trainer would refuse it halfway through the job)."""
        for run in queue.runs:
            t = run.config["train"]
            micro = t["batch_size"] // t.get("grad_accum", 1)
            if micro % self.ranks:
                raise UserError(
                    f"run {run.name} trains micro-batches of {micro} sequences, which do not "
                    f"split evenly over {self.ranks} ranks; choose a number of ranks that "
                    f"divides {micro}."
                )

    def run(self, queue: RunQueue) -> Outcome:
        """Train ``queue`` on the job's ranks. On a node other than node 0 this process only
        lends its ranks: rank 0, on node 0, reads node 0's queue and run directories."""
        before = []
        if self.node_rank == 0:
            self.check(queue)
            before = [n for n, (s, _) in queue.states().items() if s == "completed"]
            queue.write()
        log = queue.folder / "logs" / "torchrun.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        worker = ["-m", "oneepoch.runworker", str(queue.path.resolve())]
        cmd = [*WORKER, "--agent", *self.torchrun_args(), *worker]
        cmd += ["--device-kind", self.device_kind, "--stderr-to-stdout"]
        env = dict(os.environ)
        if self.device_kind == "cpu" and "OMP_NUM_THREADS" not in env:
            # torchrun's default of 1 thread per process would leave cores idle
            env["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // self.nproc))
        # torchrun's own messages go to its log; the ranks write to this process's stderr
        # (the worker moves its stderr onto the stdout it inherits).
        with open(log, "ab") as agent_log, ForwardSignals() as signals:
            proc = subprocess.Popen(
                cmd, env=env, stdout=sys.stderr, stderr=agent_log, start_new_session=True
            )
            signals.children.append(proc)
            code = proc.wait()
        if signals.signum:
            raise Stopped(signals.signum)
        if code:
            raise UserError(
                f"the torchrun job stopped (exit {code}) before its runs were trained: the "
                f"lines above say why, and torchrun's own log is {log}; every finished run is "
                "kept: run the same command again to continue."
            )
        return Outcome(before)


@dataclass(frozen=True)
class Slot:
    text: str  # as given: cuda:1, cpu:0-3
    kind: str  # cuda or cpu
    cores: tuple[int, ...] = ()
    gpu: int | None = None

    def env(self) -> dict[str, str]:
        if self.kind == "cuda":
            return {"CUDA_VISIBLE_DEVICES": str(self.gpu)}
        return {"OMP_NUM_THREADS": str(len(self.cores))}

    def worker_args(self) -> list[str]:
        return ["--cores", ",".join(map(str, self.cores))] if self.cores else []


def parse_devices(text: str) -> list[Slot]:
    """Slots from --devices: cuda:N (one GPU) or cpu:N / cpu:A-B (cores), comma-separated."""
    slots = []
    for item in (x.strip() for x in text.split(",")):
        m = re.fullmatch(r"(cpu|cuda):(\d+)(?:-(\d+))?", item)
        if not m or (m[1] == "cuda" and m[3]):
            raise UserError(
                "--devices takes slots separated by commas, each a GPU (cuda:0) or a range of "
                f"CPU cores (cpu:0-3), e.g. cuda:0,cuda:1 or cpu:0-3,cpu:4-7; not {item!r}."
            )
        first, last = int(m[2]), int(m[3] or m[2])
        if m[1] == "cuda":
            slots.append(Slot(item, "cuda", gpu=first))
        elif last < first:
            raise UserError(f"--devices: {item} counts cores backwards; write cpu:{last}-{first}.")
        else:
            slots.append(Slot(item, "cpu", cores=tuple(range(first, last + 1))))
    if len({s.kind for s in slots}) > 1:
        raise UserError("--devices mixes GPUs and CPU cores; give slots of one kind.")
    taken = [c for s in slots for c in s.cores] + [s.gpu for s in slots if s.gpu is not None]
    if len(taken) != len(set(taken)):
        raise UserError(f"--devices {text} names a device in two slots; give each slot its own.")
    if slots[0].kind == "cpu":
        have = sorted(os.sched_getaffinity(0))
        missing = sorted(set(taken) - set(have))
        if missing:
            raise UserError(
                f"--devices names core(s) {', '.join(map(str, missing))}, which this process "
                f"may not use (it has {_ranges(have)}); give slots within those."
            )
    else:
        import torch

        count = torch.cuda.device_count()
        if max(taken) >= count:
            raise UserError(
                f"--devices names cuda:{max(taken)}, but {count} GPU(s) are visible here; give "
                f"slots among cuda:0 to cuda:{count - 1}."
                if count
                else "--devices names GPUs, but torch sees none here; give CPU slots (cpu:0-3)."
            )
    return slots


def _ranges(cores: list[int]) -> str:
    out, start = [], None
    for i, c in enumerate(cores):
        start = c if start is None else start
        if i + 1 == len(cores) or cores[i + 1] != c + 1:
            out.append(str(start) if start == c else f"{start}-{c}")
            start = None
    return ("cores " if len(cores) > 1 else "core ") + ",".join(out)


class Slots:
    """Independent segments at once, one child process per slot, pinned to it."""

    node_rank = 0

    def __init__(self, slots: list[Slot]):
        self.slots = slots

    def describe(self) -> str:
        what = ", ".join(
            s.text + (f" ({_ranges(list(s.cores))})" if s.cores else "") for s in self.slots
        )
        return f"{len(self.slots)} runs at once, each in its own process pinned to a slot: {what}"

    def placement(self, seconds: dict[str, float]) -> dict[str, str]:
        """Where each run goes if each takes its estimated ``seconds``: the first slot to
        come free, in queue order (as ``execute`` places them)."""
        free_at = [(0.0, i) for i in range(len(self.slots))]
        where = {}
        for name, s in seconds.items():
            t, i = min(free_at)
            where[name] = self.slots[i].text
            free_at[i] = (t + s, i)
        return where

    def run(self, queue: RunQueue) -> Outcome:
        queue.write()
        return train_queue(queue, self.execute, where=f"{len(self.slots)} slots")

    def execute(self, segments: list[Segment], progress: QueueProgress) -> dict[str, str]:
        progress.parallel = len(self.slots)
        pending, failed = list(segments), {}
        running: dict[int, tuple[subprocess.Popen, Segment, float, Path]] = {}
        with ForwardSignals() as signals:
            while pending or running:
                for i, slot in enumerate(self.slots):
                    if i in running or not pending or signals.signum:
                        continue
                    seg = pending.pop(0)
                    proc, log = self._start(progress.queue, seg, slot)
                    signals.children.append(proc)
                    running[i] = (proc, seg, time.perf_counter(), log)
                    progress.starting(seg, slot.text)
                time.sleep(0.05)
                for i, (proc, seg, began, log) in list(running.items()):
                    if proc.poll() is None:
                        continue
                    del running[i]
                    if proc.returncode == 0:
                        progress.finished(seg, time.perf_counter() - began)
                    elif not signals.signum:
                        failed[seg.run.name] = _why(proc.returncode, log)
                        progress.failed_run(seg)
        if signals.signum:
            raise Stopped(signals.signum)
        return failed

    def _start(self, queue: RunQueue, seg: Segment, slot: Slot):
        log = queue.folder / "logs" / f"{seg.run.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        cmd = [*WORKER, str(queue.path.resolve()), "--run", seg.run.name]
        cmd += ["--until", str(seg.until), *(["--resume"] if seg.resume else [])]
        with open(log, "ab") as fh:
            fh.write(
                f"== {time.ctime()}: {seg.run.name} to step {seg.until} on {slot.text}\n".encode()
            )
            fh.flush()
            proc = subprocess.Popen(
                [*cmd, *slot.worker_args()],
                env={**os.environ, **slot.env()},
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # signals reach it through ForwardSignals, once
            )
        return proc, log


def _why(code: int, log: Path) -> str:
    """Why a run's process failed: the last line it wrote (its one-sentence error)."""
    lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
    last = lines[-1].removeprefix("error: ") if lines else "no output"
    how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
    return f"{last} ({how}; log: {log})"


class ForwardSignals:
    """While child processes run: SIGINT or SIGTERM sent to this process is passed on to
    them, once, and noted (``signum``), so they checkpoint and stop before this one does."""

    def __enter__(self):
        self.signum, self.children = 0, []
        self._old = {s: signal.signal(s, self._forward) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _forward(self, signum, _frame) -> None:
        if self.signum:
            return
        self.signum = signum
        for proc in self.children:
            if proc.poll() is None:
                proc.send_signal(signum)

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def launch_from_args(args, device_kind: str) -> Here | Torchrun | Slots:
    """The launch the flags of ``add_launch_flags`` ask for, checked."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError(
            "this command starts torchrun itself: run it without torchrun, with "
            "--nproc-per-node N (and the node options on each node; docs/performance.md)."
        )
    devices = getattr(args, "devices", None)
    if args.nproc_per_node < 1 or args.nnodes < 1:
        raise UserError("--nproc-per-node and --nnodes must be at least 1.")
    if not 0 <= args.node_rank < args.nnodes:
        raise UserError(f"--node-rank must be between 0 and --nnodes - 1 ({args.nnodes - 1}).")
    if args.nnodes > 1 and not args.master_addr:
        raise UserError(
            "--nnodes above 1 needs --master-addr: the address of node 0, where every node "
            "meets (the same on every node)."
        )
    if devices:
        if args.nproc_per_node > 1 or args.nnodes > 1:
            raise UserError(
                "--devices spreads whole runs over devices, --nproc-per-node splits each run "
                "over processes: give one of them."
            )
        return Slots(parse_devices(devices))
    if args.nproc_per_node == 1 and args.nnodes == 1:
        return Here()
    if device_kind == "auto":
        import torch

        device_kind = "cuda" if torch.cuda.is_available() else "cpu"
    return Torchrun(
        args.nproc_per_node,
        args.nnodes,
        args.node_rank,
        args.master_addr,
        args.master_port,
        device_kind,
    )
