"""Helpers shared by the tests: small real-text datasets, running the CLI as a user does."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from oneepoch.plan.planner import UniformRate

SRC = Path(__file__).resolve().parents[1] / "src"
# Trainer flags for a model small enough to train in seconds in a test.
TINY = [
    "--n-layer",
    "2",
    "--n-head",
    "2",
    "--d-model",
    "64",
    "--seq-len",
    "64",
    "--eval-tokens",
    "4096",
    "--quiet",
]
# The live forecast's worker re-fits beside the run and the run waits for it at checkpoints
# and at the end: most tests train without it, those about its records with it.
FORECASTING = list(TINY)
TINY = [*FORECASTING, "--no-forecast"]


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    """benchmarks/NAME.py as a module. The benchmarks are scripts that import each other as
    siblings, so their folder goes on sys.path, as running one puts it there."""
    import importlib

    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)


def stdlib_text(n_bytes: int) -> bytes:
    """Real text present on every machine: the standard library's sources."""
    out = bytearray()
    for f in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        out += f.read_bytes() + b"\n"
        if len(out) >= n_bytes:
            break
    return bytes(out[:n_bytes])


def write_byte_dataset(out: Path, text: bytes, val_fraction: float = 0.05) -> Path:
    from oneepoch.data.shards import ShardWriter

    out.mkdir(parents=True, exist_ok=True)
    arr = np.frombuffer(text, dtype=np.uint8).astype(np.uint16)
    cut = int(len(arr) * (1 - val_fraction))
    splits = {}
    for name, part in [("train", arr[:cut]), ("val", arr[cut:])]:
        writer = ShardWriter(out / f"{name}_00000.bin", np.uint16)
        writer.write(part)
        splits[name] = {"tokens": len(part), "documents": 1, "shards": [writer.close()]}
    manifest = {
        "format": "oneepoch-dataset",
        "version": 1,
        "dtype": "uint16",
        "tokenizer": {
            "kind": "bytes",
            "file": None,
            "sha256": hashlib.sha256(b"bytes").hexdigest(),
            "vocab_size": 257,
            "eot_id": 256,
        },
        "splits": splits,
        "sources": [],
        "stats": {},
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def cli_env(**extra: str) -> dict:
    """The environment for running oneepoch from the source tree, plus ``extra``. One
    intra-op thread unless the caller's environment says otherwise: the tests' models
    (0.1-1M parameters) train faster on one core than split over two (a 90-step run of
    tests/test_train.py: 7.3-9.2 s against 10.2-11.8 s), and the other core is left to the
    live forecast's worker and to pytest."""
    path = str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")
    threads = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return {**os.environ, **threads, "PYTHONPATH": path, **extra}


def run_cli(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run `python -m oneepoch ARGS` in a fresh process (as a user would)."""
    return subprocess.run(
        [sys.executable, "-m", "oneepoch", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(),
        **kwargs,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], nproc: int = 1, **env_extra: str) -> subprocess.Popen:
    """Start `python -m oneepoch ARGS`, or torchrun with ``nproc`` processes, in the background."""
    if nproc > 1:
        prefix = [
            *("-m", "torch.distributed.run", "--nproc-per-node", str(nproc)),
            *("--master-port", str(free_port()), "-m", "oneepoch"),
        ]
    else:
        prefix = ["-m", "oneepoch"]
    return subprocess.Popen(
        [sys.executable, *prefix, *args],
        env=cli_env(**env_extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: killable with all its workers
    )


def read_metrics(run_dir: Path) -> list[dict]:
    """The training and evaluation lines of metrics.jsonl (``read_forecasts``: the rest)."""
    return [x for x in read_records(run_dir) if x.get("kind") != "forecast"]


def read_forecasts(run_dir: Path) -> list[dict]:
    """The live forecast's records, in the order they were written."""
    return [x for x in read_records(run_dir) if x.get("kind") == "forecast"]


def read_records(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def wait_for_step(run_dir: Path, proc: subprocess.Popen, step: int, timeout: float = 120) -> None:
    """Wait until the run's metrics reach ``step`` (a partly written last line is skipped)."""
    deadline = time.time() + timeout
    path = run_dir / "metrics.jsonl"
    while time.time() < deadline:
        if path.exists():
            lines = [x for x in path.read_text().splitlines() if x.endswith("}")]
            if lines and json.loads(lines[-1])["step"] >= step:
                return
        if proc.poll() is not None:
            raise AssertionError(f"trainer ended early: {proc.stderr.read()[-3000:]}")
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("trainer did not reach the step in time")


WORDS = "the quick brown fox jumps over a lazy dog while seven wise owls sing softly".split()


def make_corpus(folder, n=40, seed=0):
    """``n`` distinct small text files of English-like words."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        words = rng.choice(WORDS, size=int(rng.integers(20, 60)))
        (folder / f"doc{i:03d}.txt").write_text(f"Document {i}. " + " ".join(words) + ".\n")
    return folder


class FixedThroughput(UniformRate):
    """Stands in for plan.calibrate.Calibration: a constant FLOP/s, nothing measured (and no
    torch imported: the no-torch test uses it too)."""

    device = SimpleNamespace(type="cpu")
    machine = "test"


def slow(why: str):
    """A test CI leaves out to stay within its time (run with ONEEPOCH_SLOW_TESTS=1)."""

    def mark(test):
        skip = pytest.mark.skipif(
            not os.environ.get("ONEEPOCH_SLOW_TESTS"), reason=f"set ONEEPOCH_SLOW_TESTS=1: {why}"
        )
        return pytest.mark.slow(skip(test))

    return mark
