"""The processes a queue's runs train in when not in the command's own (oneepoch.launch
starts them; the queue file, oneepoch.runqueue, says what to train):

    python -m oneepoch.runworker QUEUE.json --device-kind cpu    # a rank of the queue's torchrun job
    python -m oneepoch.runworker QUEUE.json --run NAME --until STEP [--resume] [--cores 0,1]
                                                                  # one segment, pinned to a slot
    python -m oneepoch.runworker --agent TORCHRUN_ARGS...         # torchrun itself

Each one stops with the process that started it (on Linux it is sent SIGTERM when that
process dies: the trainer then checkpoints and exits), so a killed command leaves nothing
training behind. Nothing here imports torch before the process is pinned to its cores.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # prctl(2)


def die_with_parent(parent: int) -> None:
    """Be sent SIGTERM when the parent process dies (Linux; elsewhere nothing)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before we asked
        os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parent = os.getppid()
    if argv[:1] == ["--agent"]:
        die_with_parent(parent)
        from torch.distributed.run import main as torchrun

        torchrun(argv[1:])
        return 0
    p = argparse.ArgumentParser(prog="python -m oneepoch.runworker")
    p.add_argument("queue")
    p.add_argument("--device-kind", default="auto", help="what the process group is for")
    p.add_argument("--run", help="train only this run's segment, in this one process")
    p.add_argument("--until", type=int, help="the step the segment trains to")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--cores", help="pin this process to these CPU cores, e.g. 0,1")
    p.add_argument("--stderr-to-stdout", action="store_true")
    args = p.parse_args(argv)
    if args.cores:  # before torch starts its threads, which inherit it
        os.sched_setaffinity(0, {int(c) for c in args.cores.split(",")})
    die_with_parent(parent)
    if args.stderr_to_stdout:
        os.dup2(1, 2)
    from oneepoch.errors import UserError
    from oneepoch.runqueue import Stopped

    # Each node says a rank's error once on its own terminal (an error rank 0 decided is
    # raised on every rank; one met on a single node, say its missing data, only there).
    speaks = os.environ.get("LOCAL_RANK", "0") == "0"
    try:
        return train_segment(args) if args.run else train_ranks(args)
    except UserError as exc:
        if speaks:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    except Stopped as exc:
        if args.run:
            print(exc, file=sys.stderr)
        return 128 + exc.signum


def train_segment(args) -> int:
    """One segment of one run in this process (a device slot's child)."""
    from oneepoch.runqueue import QueueProgress, RunQueue, Segment, train_here

    queue = RunQueue.read(args.queue)
    queue.show = queue.trainer_progress = False
    run = queue.run(args.run)
    segment = Segment(run, args.until or run.steps, args.resume)
    train_here([segment], QueueProgress(queue, {run.name: ("new", 0)}, enabled=False))
    return 0


def train_ranks(args) -> int:
    """This rank's part of the whole queue, in step with the job's other ranks."""
    import torch

    from oneepoch.distributed import init_distributed
    from oneepoch.runqueue import RunQueue, train_here, train_queue

    kind = args.device_kind
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    ranks = init_distributed(kind)
    queue = ranks.from_main(lambda: RunQueue.read(args.queue))
    train_queue(queue, train_here, ranks=ranks, where=f"{ranks.world_size} ranks")
    ranks.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
