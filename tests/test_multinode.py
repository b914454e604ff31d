"""Two torchrun "nodes" on this machine (one process each, gloo), checked against one process.

Each node is its own torchrun agent (``--nnodes 2 --nproc-per-node 1``) meeting the other at
a rendezvous on 127.0.0.1, as two machines would meet at node 0's address. Every launch
runs in its own session with a timeout and is killed whole if it overstays.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import helpers
from helpers import read_metrics
from test_distributed import assert_same_trajectory

TIMEOUT_S = 120
STEPS, PAUSE = 24, 12
ARGS = [
    *("--steps", str(STEPS), "--batch-size", "8", "--grad-accum", "2"),
    *("--log-every", "2", "--checkpoint-every", "6", "--lr", "3e-3", "--dtype", "float32"),
    *helpers.TINY,
]


def start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *cmd],
        env=helpers.cli_env(OMP_NUM_THREADS="1"),  # one core per rank
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: killable with its worker
    )


def finish_all(procs: list[subprocess.Popen]) -> list[str]:
    """Wait for every launch; on a timeout kill them all. Returns their stderr."""
    errs = []
    try:
        for proc in procs:
            errs.append(proc.communicate(timeout=TIMEOUT_S)[1])
    except subprocess.TimeoutExpired:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        tails = [p.communicate()[1][-2000:] for p in procs]
        raise AssertionError(
            f"a node did not finish in {TIMEOUT_S} s:\n" + "\n".join(tails)
        ) from None
    for proc, err in zip(procs, errs):
        assert proc.returncode == 0, err[-3000:]
    return errs


def two_nodes(backend: str, per_node_args: list[list[str]]) -> list[str]:
    """torchrun on two nodes of one process each; node ``i`` runs ``oneepoch per_node_args[i]``."""
    port = helpers.free_port()
    procs = []
    for node, args in enumerate(per_node_args):
        if backend == "c10d":
            # The store lives with node 0; saying so avoids both agents trying to host it.
            rdzv = [
                *("--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}"),
                *("--rdzv-id", "oneepoch-test", "--rdzv-conf", f"is_host={int(node == 0)}"),
            ]
        else:  # static: node ranks as given, node 0 at --master-addr
            rdzv = ["--master-addr", "127.0.0.1", "--master-port", str(port)]
        launcher = ["-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node)]
        procs.append(start([*launcher, "--nproc-per-node", "1", *rdzv, "-m", "oneepoch", *args]))
    return finish_all(procs)


@pytest.fixture(scope="module")
def reference(byte_dataset, tmp_path_factory) -> Path:
    """One process, the same global batch."""
    out = tmp_path_factory.mktemp("one") / "run"
    finish_all(
        [start(["-m", "oneepoch", "train", "--data", str(byte_dataset), "--out", str(out), *ARGS])]
    )
    return out


def test_two_c10d_nodes_follow_one_process_and_resume_on_one(byte_dataset, reference, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--data", str(byte_dataset), "--out", str(out), *ARGS]
    two_nodes("c10d", [[*args, "--until-step", str(PAUSE)]] * 2)
    want = read_metrics(reference)
    got = read_metrics(out)
    assert got[-1]["step"] == PAUSE
    assert_same_trajectory(got, [x for x in want if x["step"] <= PAUSE])  # rank 0 wrote, once
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "paused" and info["hardware"]["world_size"] == 2
    assert info["peak_flops"]["devices"] == 2
    finish_all([start(["-m", "oneepoch", *args, "--resume"])])  # on one process
    assert_same_trajectory(read_metrics(out), want)
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "completed" and info["final"]["step"] == STEPS


def test_static_node_ranks_rank_0_alone_writes(byte_dataset, reference, tmp_path):
    """With --node-rank (static rendezvous) node 0 holds rank 0: the run directory is written
    there, from node 0's --out; node 1's --out is never made."""
    out, elsewhere = tmp_path / "node0" / "run", tmp_path / "node1" / "run"
    common = ["train", "--data", str(byte_dataset), *ARGS]
    two_nodes("static", [[*common, "--out", str(out)], [*common, "--out", str(elsewhere)]])
    assert_same_trajectory(read_metrics(out), read_metrics(reference))
    assert json.loads((out / "run.json").read_text())["hardware"]["world_size"] == 2
    assert not (tmp_path / "node1").exists()
