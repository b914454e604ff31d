"""`oneepoch sweep` on many processes and devices, as a user runs it: spread over two device
slots of one CPU core each, with a run that fails on purpose; on the two ranks of a torchrun
job (gloo), killed mid-job, then checked against the slots' one-process runs. The reproduce job on two ranks
is in test_reproduce.py, beside its one-process reference.

Every command runs in its own session with a timeout; a test that fails kills the whole
process tree it started, so no trainer is left behind.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

import helpers
from helpers import read_metrics

TIMEOUT_S = 180
SWEEP = ["sweep", "--no-calibrate", "--quiet", "--seq-len", "32", "--eval-tokens", "256"]
SWEEP += ["--dtype", "float32", "--device", "cpu"]
GRID = ["--budget", "6e9", "--sizes", "13k,50k"]  # two runs: 173 and 56 steps
# Losses on two ranks equal one process's up to float reordering (as tests/test_distributed.py).
REL = 2e-3


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    """One throughput cache for the module (nothing measured with --no-calibrate), so every
    sweep here plans the same grid."""
    return helpers.cli_env(ONEEPOCH_CACHE=str(tmp_path_factory.mktemp("cache")))


def start(args: list, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "oneepoch", *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def tree(proc: subprocess.Popen) -> list[psutil.Process]:
    try:
        root = psutil.Process(proc.pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the command and every process under it at once (torchrun's workers live in
    sessions of their own): what a crash of the machine's job would do."""
    for p in tree(proc):
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.communicate()


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        raise AssertionError(f"the command did not finish in {TIMEOUT_S} s") from None
    return proc.returncode, out, err


def sweep(args: list, env: dict) -> tuple[int, str, str]:
    return finish(start([*SWEEP, *args], env))


def status(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "run.json").read_text()).get("status")
    except (OSError, ValueError):
        return None


def csv_rows(out: Path) -> dict[str, dict]:
    with (out / "sweep.csv").open() as fh:
        return {str(Path(row["run"]).relative_to(out)): row for row in csv.DictReader(fh)}


def assert_same_metrics(got: Path, want: Path) -> None:
    """Every metrics line: same steps, tokens and learning rate; losses within REL."""
    a, b = read_metrics(got), read_metrics(want)
    assert [x["step"] for x in a] == [x["step"] for x in b]
    for x, y in zip(a, b):
        assert (x["tokens"], x["unique_tokens"], x["lr"]) == (
            y["tokens"],
            y["unique_tokens"],
            y["lr"],
        )
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=REL), x["step"]
        if "val_loss" in y:
            assert x["val_loss"] == pytest.approx(y["val_loss"], rel=REL), x["step"]


@pytest.fixture(scope="module")
def slots(byte_dataset, env, tmp_path_factory) -> SimpleNamespace:
    """A sweep of four runs over two slots of one core each (`--devices cpu:0,cpu:1`), one
    of them made to fail on purpose: its folder holds a damaged config.toml, which the
    trainer refuses to resume. What was seen while it ran: each worker's cores, and the
    most workers alive at once. Its runs are one-process runs, the reference the two-rank
    sweep is checked against."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPU cores")
    out = tmp_path_factory.mktemp("slots") / "sweep"
    grid = ["--budget", "6e9,1.2e10", "--sizes", "13k,50k"]
    args = [*grid, "--data", byte_dataset, "--out", out, "--devices", "cpu:0,cpu:1"]
    broken = out / "C1.20e10" / "L1-d64"
    broken.mkdir(parents=True)
    (broken / "config.toml").write_text("this is [not toml\n")

    proc = start([*SWEEP, *args], env)
    pinned: dict[int, frozenset] = {}  # worker pid -> its cores
    together = 0
    while proc.poll() is None:
        alive = []
        for p in tree(proc)[1:]:
            try:
                if "oneepoch.runworker" in p.cmdline():
                    pinned[p.pid] = frozenset(p.cpu_affinity())
                    alive.append(p.pid)
            except psutil.NoSuchProcess:
                continue
        together = max(together, len(alive))
        time.sleep(0.02)
    code, text, err = finish(proc)
    return SimpleNamespace(
        out=out, args=args, broken=broken, code=code, text=text, err=err, pinned=pinned,
        together=together,
    )  # fmt: skip


def run_names(out: Path) -> list[str]:
    return sorted(str(p.parent.relative_to(out)) for p in out.glob("*/*/run.json"))


def test_devices_train_runs_at_once_on_pinned_cores_and_a_failing_run_spares_the_others(slots, env):
    out = slots.out
    assert slots.code == 1, slots.err[-3000:]
    assert "placement: 2 runs at once, each in its own process pinned to a slot" in slots.text
    assert len(slots.pinned) == 4  # a process per run, each pinned to one slot's core
    assert set(slots.pinned.values()) == {frozenset({0}), frozenset({1})}
    assert slots.together == 2
    failed = [line for line in slots.err.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 1 and failed[0].startswith("failed: C1.20e10/L1-d64: ")
    assert "config.toml" in failed[0] and "(exit 2; log: " in failed[0]
    assert "Traceback" not in slots.err
    done = run_names(out)
    assert len(done) == 3 and "C1.20e10/L1-d64" not in done
    for name in done:
        info = json.loads((out / name / "run.json").read_text())
        assert info["status"] == "completed" and info["hardware"]["torch_threads"] == 1
    assert len(csv_rows(out)) == 3  # the CSV of what completed

    # The cause removed, the same command trains only the run that failed.
    (slots.broken / "config.toml").unlink()
    stamps = {n: (out / n / "metrics.jsonl").stat().st_mtime_ns for n in done}
    code, text, err = sweep(slots.args, env)
    assert code == 0, err[-3000:]
    assert text.count("  done") == 3
    assert stamps == {n: (out / n / "metrics.jsonl").stat().st_mtime_ns for n in done}
    assert status(slots.broken) == "completed" and len(csv_rows(out)) == 4


def test_sweep_on_two_ranks_matches_one_process_and_a_kill_then_rerun_completes(
    byte_dataset, env, slots, tmp_path
):
    out = tmp_path / "sweep"
    args = [*GRID, "--data", byte_dataset, "--out", out, "--nproc-per-node", "2"]
    proc = start([*SWEEP, *args], env)
    names = ["C6.00e09/L1-d32", "C6.00e09/L1-d64"]  # in the order of the queue
    deadline = time.time() + TIMEOUT_S
    while status(out / names[0]) != "completed":  # the first run of the queue is done ...
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "the first run did not complete in time"
        time.sleep(0.02)
    kill_tree(proc)  # ... and the second one has started or is about to: kill everything
    assert status(out / names[1]) != "completed"
    kept = (out / names[0] / "metrics.jsonl").read_bytes()

    code, text, err = sweep(args, env)
    assert code == 0, err[-3000:]
    assert "placement: each run on 2 ranks of one torchrun job" in text
    assert text.count("  done") == 1  # the finished run is not trained again
    assert (out / names[0] / "metrics.jsonl").read_bytes() == kept
    rows, ref = csv_rows(out), csv_rows(slots.out)
    assert sorted(rows) == names
    for name in names:  # as the one-process runs of the same configs
        assert_same_metrics(out / name, slots.out / name)
        info = json.loads((out / name / "run.json").read_text())
        assert info["status"] == "completed" and info["hardware"]["world_size"] == 2
        assert [rows[name][k] for k in ("params", "tokens", "flops")] == [
            ref[name][k] for k in ("params", "tokens", "flops")
        ]
        assert float(rows[name]["loss"]) == pytest.approx(float(ref[name]["loss"]), rel=REL)


@pytest.fixture
def in_process(env, monkeypatch, capsys):
    """`oneepoch ARGS` in this process (flags and dry runs: nothing trains)."""
    from oneepoch.cli import main

    monkeypatch.setenv("ONEEPOCH_CACHE", env["ONEEPOCH_CACHE"])

    def run(*argv) -> tuple[int, str, str]:
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_dry_runs_show_where_the_runs_will_go(in_process, byte_dataset, tmp_path):
    out = tmp_path / "sweep"
    base = [*SWEEP, "--data", byte_dataset, "--out", out, "--dry-run"]
    code, text, err = in_process(*base, *GRID, "--nproc-per-node", "2")
    assert code == 0, err
    assert "placement: each run on 2 ranks of one torchrun job, its batch split" in text
    assert text.count("train on 2 ranks") == 2
    grid = ["--budget", "6e9,1.2e10", "--sizes", "13k,50k"]
    code, text, err = in_process(*base, *grid, "--devices", "cpu:0,cpu:1", "--json")
    assert code == 0, err
    # Each run goes to the first slot to come free, by the runs' estimated times.
    placed = [r["placement"] for r in json.loads(text)["runs"]]
    assert placed[:2] == ["cpu:0", "cpu:1"] and set(placed) == {"cpu:0", "cpu:1"}
    code, text, err = in_process(
        "reproduce", "--preset", "micro", "--data", byte_dataset, "--out", out,
        "--nproc-per-node", "2", "--dry-run",
    )  # fmt: skip
    assert code == 0, err
    assert "placement: each run on 2 ranks of one torchrun job" in text
    assert "the runs of a seed interleaved in 3 segments" in text
    runs = int(re.search(r"(\d+) runs to train per seed", text)[1])
    assert sum(line.endswith("  train") for line in text.splitlines()) == runs > 0
    assert not out.exists()  # a dry run writes nothing


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--devices", "gpu:0"], "--devices takes slots separated by commas"),
        (["--devices", "cpu:0,cpu:0-1"], "names a device in two slots"),
        (["--devices", "cpu:0,cpu:4096"], "core(s) 4096, which this process may not use"),
        (["--devices", "cpu:0,cpu:1", "--nproc-per-node", "2"], "give one of them"),
        (["--nnodes", "2", "--nproc-per-node", "2"], "--nnodes above 1 needs --master-addr"),
        (["--nproc-per-node", "3"], "do not split evenly over 3 ranks"),
    ],
)
def test_bad_placement_flags_are_one_sentence_before_anything_runs(
    in_process, byte_dataset, tmp_path, flags, says
):
    out = tmp_path / "sweep"
    code, text, err = in_process(*SWEEP, *GRID, "--data", byte_dataset, "--out", out, *flags)
    assert code == 2 and says in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (out / "queue.json").exists() and not any(out.glob("*/*/run.json"))
