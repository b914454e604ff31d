"""`train --compile` with the trainer's other options: dropout, gradient accumulation,
pause and resume, FSDP on two ranks. Compiled code must train the same model as eager code,
and a compiled run must resume exactly as an eager one does."""

from __future__ import annotations

import pytest

import helpers
from helpers import read_metrics
from test_distributed import assert_same_trajectory, finish, launch

ARGS = [
    *("--steps", "16", "--batch-size", "8", "--grad-accum", "2", "--log-every", "2"),
    *("--checkpoint-every", "8", "--lr", "3e-3", "--dtype", "float32", *helpers.TINY),
]
TIMEOUT_S = 600  # compilation on two CPU cores


def start(data, out, *extra, nproc=1):
    return launch(["train", "--data", str(data), "--out", str(out), *ARGS, *extra], nproc)


def wait(*procs):
    for proc in procs:
        code, err = finish(proc, TIMEOUT_S)
        assert code == 0, err[-3000:]


@helpers.slow("~30 s or more on a 2-core CPU; CI stays within its time")
def test_compiled_runs_train_as_eager_ones_and_resume_exactly(byte_dataset, tmp_path):
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    dropout, paused = tmp_path / "dropout", tmp_path / "dropout-paused"
    wait(
        start(byte_dataset, eager),
        start(byte_dataset, compiled, "--compile"),
        start(byte_dataset, dropout, "--compile", "--dropout", "0.1"),
        start(byte_dataset, paused, "--compile", "--dropout", "0.1", "--until-step", "8"),
    )
    # Same arithmetic up to the compiler's fusion and reordering.
    assert_same_trajectory(read_metrics(compiled), read_metrics(eager), rel=1e-4)
    # Dropout's masks come from the compiled kernels' own generator state, which a resume
    # restores as it does eager's: the paused run continues to the same losses.
    wait(launch(["train", "--out", str(paused), "--resume", "--quiet"]))
    assert_same_trajectory(read_metrics(paused), read_metrics(dropout), rel=1e-5)
    # and dropout does act: the losses differ from the run without it
    assert read_metrics(dropout)[-1]["train_loss"] != pytest.approx(
        read_metrics(compiled)[-1]["train_loss"], rel=1e-3
    )


@helpers.slow("~30 s or more on a 2-core CPU; CI stays within its time")
def test_compile_with_fsdp_on_two_ranks_matches_one_eager_process(byte_dataset, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    wait(start(byte_dataset, one))
    wait(start(byte_dataset, two, "--compile", "--parallel", "fsdp", nproc=2))
    assert_same_trajectory(read_metrics(two), read_metrics(one))
