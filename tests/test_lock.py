"""oneepoch.locking: one writer per directory, refused at once, never stuck after a kill."""

import os
import signal
import subprocess
import sys

import pytest

from helpers import cli_env
from oneepoch.errors import UserError
from oneepoch.locking import LOCK_NAME, hold, read_holder

HOLDER = """
import sys
from oneepoch.locking import hold
with hold(sys.argv[1], "train"):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes our stdin (or kills us)
"""

TRY = """
import sys
from oneepoch.errors import UserError
from oneepoch.locking import hold
try:
    with hold(sys.argv[1], "prepare"):
        print("acquired")
except UserError as exc:
    print("refused:", exc)
"""


def start_holder(directory):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(directory)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def try_lock(directory) -> str:
    out = subprocess.run(
        [sys.executable, "-c", TRY, str(directory)],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_second_process_is_refused_naming_the_holder_then_a_kill_frees_it(tmp_path):
    holder = start_holder(tmp_path)
    try:
        answer = try_lock(tmp_path)
        assert answer.startswith("refused:") and f"process {holder.pid}" in answer
        assert "oneepoch train" in answer and "\n" not in answer
        assert read_holder(tmp_path)["pid"] == holder.pid
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert (tmp_path / LOCK_NAME).exists()  # the killed holder's file, naming a dead PID
    assert try_lock(tmp_path) == "acquired"
    assert not (tmp_path / LOCK_NAME).exists()


def test_released_lock_leaves_the_directory_as_it_was(tmp_path):
    holder = start_holder(tmp_path)
    holder.stdin.close()
    assert holder.wait(timeout=60) == 0
    assert list(tmp_path.iterdir()) == []
    assert try_lock(tmp_path) == "acquired"


def test_not_reentrant_and_needs_the_directory(tmp_path):
    with hold(tmp_path, "prepare"):
        with pytest.raises(UserError, match=f"process {os.getpid()}"):
            with hold(tmp_path, "prepare"):
                pass
    with hold(tmp_path, "prepare"):  # free again
        pass
    with pytest.raises(UserError, match="does not exist"):
        with hold(tmp_path / "missing", "train"):
            pass


def test_two_trainers_on_one_run_directory(byte_dataset, tmp_path):
    """The second `oneepoch train` on a run in progress is refused at once, naming the first;
    the first goes on undisturbed; a lock left by a killed trainer blocks nobody."""
    import json
    import time

    from helpers import TINY, launch, read_metrics, run_cli, wait_for_step

    run = tmp_path / "run"
    base = ["train", "--data", str(byte_dataset), "--out", str(run), *TINY, "--batch-size", "2"]
    base += ["--log-every", "1"]
    first = launch([*base, "--time", "120", "--seed", "0"])
    try:
        wait_for_step(run, first, 2)
        for extra in (["--steps", "50", "--seed", "1"], ["--time", "120", "--resume"]):
            started = time.perf_counter()
            res = run_cli(*base, *extra)
            err = res.stderr.strip()
            assert res.returncode == 2 and "Traceback" not in err and "\n" not in err, err
            assert f"is in use by process {first.pid} (oneepoch train, since " in err, err
            assert time.perf_counter() - started < 60  # refused at once, not after waiting
        assert first.poll() is None  # still training
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=120)
        assert first.returncode == 128 + signal.SIGTERM, err
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    steps = [line["step"] for line in read_metrics(run)]
    assert steps == list(range(1, len(steps) + 1))  # one run's lines, none interleaved
    assert "seed = 0" in (run / "config.toml").read_text()
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    assert not (run / LOCK_NAME).exists()

    # killed while holding the run: its lock file stays, naming a dead PID, and blocks nobody
    again = launch([*base, "--time", "120", "--resume"])
    wait_for_step(run, again, steps[-1] + 2)
    os.killpg(again.pid, signal.SIGKILL)
    again.wait()
    assert read_holder(run)["pid"] == again.pid
    res = run_cli(*base, "--time", "120", "--resume", "--until-step", str(steps[-1] + 4))
    assert res.returncode == 0, res.stderr
    assert not (run / LOCK_NAME).exists()
