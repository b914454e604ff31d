"""The trainer under torchrun: two processes on gloo (CPU), checked against one process.

Every launch runs in its own session with a timeout, and the whole session is killed if it
overstays, so a stuck collective cannot hang the test run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

import helpers
from helpers import read_metrics

TIMEOUT_S = 90
ARGS = [
    "--steps",
    "48",
    "--batch-size",
    "8",
    "--grad-accum",
    "2",  # 2 micro-batches of 4 windows, 2 per rank: exercises no_sync
    "--log-every",
    "2",
    "--checkpoint-every",
    "6",
    "--lr",
    "3e-3",
    "--dtype",
    "float32",
    *helpers.TINY,
]


def launch(args: list[str], nproc: int = 1) -> subprocess.Popen:
    return helpers.launch(args, nproc, OMP_NUM_THREADS="1")  # one core per rank


def finish(proc: subprocess.Popen, timeout: float = TIMEOUT_S) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        raise AssertionError(f"launch did not finish in {timeout} s:\n{err[-3000:]}") from None
    return proc.returncode, err


def run(args: list[str], nproc: int = 1) -> None:
    code, err = finish(launch(args, nproc))
    assert code == 0, err[-3000:]


def assert_same_trajectory(got: list[dict], want: list[dict], rel: float = 2e-3) -> None:
    """Same lines, steps and token counts; losses equal up to float reordering."""
    assert [x["step"] for x in got] == [x["step"] for x in want]
    for a, b in zip(got, want):
        assert (a["kind"], a["tokens"], a["unique_tokens"], a["lr"]) == (
            b["kind"],
            b["tokens"],
            b["unique_tokens"],
            b["lr"],
        )
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=rel), a["step"]
        if "val_loss" in b:
            assert a["val_loss"] == pytest.approx(b["val_loss"], rel=rel), a["step"]


def wait_for_step(run_dir: Path, proc: subprocess.Popen, step: int) -> None:
    helpers.wait_for_step(run_dir, proc, step, timeout=TIMEOUT_S)


def worker_pids(proc: subprocess.Popen, n: int) -> dict[int, int]:
    """{rank: pid} of torchrun's workers."""
    deadline = time.time() + TIMEOUT_S
    while time.time() < deadline:
        found = {}
        for child in psutil.Process(proc.pid).children(recursive=True):
            try:
                rank = child.environ().get("RANK")
            except psutil.Error:
                continue
            if rank is not None:
                found[int(rank)] = child.pid
        if len(found) == n:
            return found
        time.sleep(0.05)
    raise AssertionError("torchrun's workers did not appear")


@pytest.fixture(scope="module")
def reference(byte_dataset, tmp_path_factory) -> Path:
    """One process, the same global batch."""
    out = tmp_path_factory.mktemp("one") / "run"
    run(["train", "--data", str(byte_dataset), "--out", str(out), *ARGS])
    return out


def test_two_ranks_follow_the_one_rank_loss_trajectory(byte_dataset, reference, tmp_path):
    out = tmp_path / "run"
    run(["train", "--data", str(byte_dataset), "--out", str(out), *ARGS], nproc=2)
    assert_same_trajectory(read_metrics(out), read_metrics(reference))  # rank 0 wrote, once
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "completed" and info["hardware"]["world_size"] == 2
    assert info["parallel"] == "ddp" and info["peak_flops"]["devices"] == 2
    assert info["tokens_per_s"] > 0 and 0 < info["mfu"] < 1


def test_a_killed_rank_leaves_a_checkpoint_that_resumes_on_one_rank(
    byte_dataset, reference, tmp_path
):
    from oneepoch import checkpoint

    out = tmp_path / "run"
    args = ["train", "--data", str(byte_dataset), "--out", str(out), *ARGS]
    proc = launch(args, nproc=2)
    victim, kill_at = random.choice([0, 1]), random.randint(8, 30)
    pids = worker_pids(proc, 2)
    wait_for_step(out, proc, kill_at)
    os.kill(pids[victim], signal.SIGKILL)
    code, err = finish(proc)  # the surviving rank notices the lost peer and torchrun stops
    assert code != 0, f"the run finished before rank {victim} was killed at step {kill_at}"
    last = checkpoint.latest(out / "checkpoints")
    assert last is not None
    checkpoint.load(last)  # complete and readable
    run([*args, "--resume"])  # on one process
    assert_same_trajectory(read_metrics(out), read_metrics(reference))
    assert json.loads((out / "run.json").read_text())["status"] == "completed"


def test_fsdp_resumes_a_one_rank_run_on_two_ranks(byte_dataset, reference, tmp_path):
    import torch

    from oneepoch import checkpoint

    out = tmp_path / "run"
    args = ["train", "--data", str(byte_dataset), "--out", str(out), *ARGS, "--parallel", "fsdp"]
    proc = launch(args)
    wait_for_step(out, proc, random.randint(8, 30))
    proc.send_signal(signal.SIGKILL)
    assert finish(proc)[0] == -signal.SIGKILL  # killed mid-run, not finished
    run([*args, "--resume"], nproc=2)
    assert_same_trajectory(read_metrics(out), read_metrics(reference))
    info = json.loads((out / "run.json").read_text())
    assert info["parallel"] == "fsdp" and info["hardware"]["world_size"] == 2
    # The final checkpoint holds full (gathered) tensors under the plain names, for the model
    # and the optimizer alike: the same as a one-process run's, up to float reordering.
    got_model, got = checkpoint.load(checkpoint.latest(out / "checkpoints"))
    want_model, want = checkpoint.load(checkpoint.latest(reference / "checkpoints"))
    assert got_model.keys() == want_model.keys()
    # Adam turns float-reordering noise in near-zero gradients into updates of up to the
    # learning rate (2e-3 here), so single elements may differ by a few steps' worth.
    for name, tensor in want_model.items():
        torch.testing.assert_close(got_model[name], tensor, rtol=1e-2, atol=1e-2)
    assert got["optimizer"]["state"].keys() == want["optimizer"]["state"].keys()
    for name, st in want["optimizer"]["state"].items():
        torch.testing.assert_close(
            got["optimizer"]["state"][name]["exp_avg"], st["exp_avg"], rtol=5e-2, atol=1e-5
        )


def test_sigterm_to_torchrun_stops_every_rank_at_one_checkpoint(byte_dataset, reference, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--data", str(byte_dataset), "--out", str(out), *ARGS]
    proc = launch(args, nproc=2)
    wait_for_step(out, proc, random.randint(8, 30))
    proc.send_signal(signal.SIGTERM)  # torchrun passes it on to its workers
    _, err = finish(proc)
    assert err.count("SIGTERM at step") == 1 and "--resume" in err  # rank 0 speaks, once
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "interrupted"
    run([*args, "--resume"], nproc=2)
    assert_same_trajectory(read_metrics(out), read_metrics(reference))
