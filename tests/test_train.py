"""The trainer end to end, through the CLI as a user runs it."""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path

import numpy as np
import pytest

import helpers
from helpers import FORECASTING, TINY, launch, read_forecasts, read_metrics, run_cli, wait_for_step


def comparable(run: Path) -> tuple[list[dict], list[dict]]:
    """Everything but the clock: a resumed run must match these bit for bit. The live
    forecast's records are written when their re-fit finishes, so they are compared by
    the step each was made at, not by where they stand in the file."""
    forecasts = sorted(read_forecasts(run), key=lambda f: f["step"])
    return [without_clock(x) for x in read_metrics(run)], [without_clock(x) for x in forecasts]


def without_clock(line: dict) -> dict:
    out = {k: v for k, v in line.items() if k != "wall_s"}
    if isinstance(out.get("target"), dict):
        out["target"] = without_clock(out["target"])
    return out


def unigram_entropy(data_dir: Path) -> float:
    from oneepoch.data.dataset import open_dataset

    tokens = open_dataset(data_dir).train.read(0, open_dataset(data_dir).train.num_tokens)
    p = np.bincount(tokens) / len(tokens)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def test_short_run_learns_and_writes_the_run_directory(byte_dataset, tmp_path):
    run = tmp_path / "run"
    res = run_cli(
        "train",
        "--data",
        str(byte_dataset),
        "--out",
        str(run),
        "--steps",
        "150",
        "--batch-size",
        "16",
        "--log-every",
        "10",
        *TINY,
    )
    assert res.returncode == 0, res.stderr
    lines = read_metrics(run)
    for field in (
        "step",
        "tokens",
        "unique_tokens",
        "epoch",
        "lr",
        "train_loss",
        "wall_s",
        "flops",
    ):
        assert all(field in line for line in lines), field
    evals = [line for line in lines if "val_loss" in line]
    eval_steps = [line["step"] for line in evals]
    assert eval_steps[:5] == [1, 2, 3, 4, 6]  # log-spaced early, for power-law fits
    assert eval_steps[-1] == 150
    assert all(b["wall_s"] >= a["wall_s"] for a, b in zip(lines, lines[1:]))
    assert all(line["tokens"] == line["unique_tokens"] == line["step"] * 16 * 64 for line in lines)
    info = json.loads((run / "run.json").read_text())
    # The unigram loss it records (validation targets under the training split's token
    # frequencies) is near the training split's own unigram entropy, computed here apart,
    # and above its bigram loss; the run learned something: its loss is clearly below.
    entropy = unigram_entropy(byte_dataset)
    assert abs(info["data"]["unigram_loss"] / entropy - 1) < 0.05
    assert 0 < info["data"]["bigram_loss"] < info["data"]["unigram_loss"]
    assert evals[-1]["val_loss"] < entropy - 0.3
    assert info["status"] == "completed"
    assert info["final"]["step"] == 150
    assert info["tokens_per_s"] > 0 and 0 < info["mfu"] < 1
    assert info["peak_flops"]["source"].startswith("measured")
    assert info["params"]["non_embedding"] > 0
    ckpts = sorted((run / "checkpoints").glob("step_*"))
    assert ckpts[-1].name == "step_00000150"


RESUME_ARGS = [
    "--steps",
    "90",
    "--batch-size",
    "8",
    "--checkpoint-every",
    "7",
    "--log-every",
    "3",
    "--dropout",
    "0.1",
    "--grad-accum",
    "2",
    "--target-loss",  # the live forecast's records, with a target, must resume exactly too
    "2.0",
    *FORECASTING,
]


@pytest.fixture(scope="module")
def uninterrupted(byte_dataset, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ref") / "run"
    res = run_cli("train", "--data", str(byte_dataset), "--out", str(run), *RESUME_ARGS)
    assert res.returncode == 0, res.stderr
    assert len(comparable(run)[1]) >= 5  # the live forecasts are compared too
    return run


def test_resume_after_sigkill_at_an_arbitrary_step_is_exact(byte_dataset, uninterrupted, tmp_path):
    kill_at = random.Random().randint(5, 80)  # a different step each run
    run = tmp_path / "run"
    args = ["train", "--data", str(byte_dataset), "--out", str(run), *RESUME_ARGS]
    proc = launch(args)
    wait_for_step(run, proc, kill_at)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    res = run_cli(*args, "--resume")
    assert res.returncode == 0, res.stderr
    assert comparable(run) == comparable(uninterrupted), f"kill at {kill_at}"


def test_training_in_segments_with_until_step_equals_one_uninterrupted_run(
    byte_dataset, uninterrupted, tmp_path
):
    run = tmp_path / "run"
    args = ["train", "--data", str(byte_dataset), "--out", str(run), *RESUME_ARGS]
    cuts = sorted(random.Random().sample(range(2, 89), 2))  # different segments each run
    for i, cut in enumerate(cuts):
        res = run_cli(*args, "--until-step", str(cut), *(["--resume"] if i else []))
        assert res.returncode == 0, res.stderr
        info = json.loads((run / "run.json").read_text())
        assert (info["status"], info["final"]["step"]) == ("paused", cut), cuts
    res = run_cli(*args, "--resume")
    assert res.returncode == 0, res.stderr
    assert json.loads((run / "run.json").read_text())["status"] == "completed"
    assert comparable(run) == comparable(uninterrupted), cuts
    # the n-gram losses the resumed segments kept from run.json are the ones counted once
    levels = ("unigram_loss", "bigram_loss")
    data, reference = (
        json.loads((r / "run.json").read_text())["data"] for r in (run, uninterrupted)
    )
    assert [data[k] for k in levels] == [reference[k] for k in levels]


def test_sigterm_checkpoints_and_says_how_to_resume(byte_dataset, uninterrupted, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--data", str(byte_dataset), "--out", str(run), *RESUME_ARGS]
    proc = launch(args)
    wait_for_step(run, proc, random.Random().randint(5, 60))
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "--resume" in err and "Traceback" not in err
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    res = run_cli(*args, "--resume")
    assert res.returncode == 0, res.stderr
    assert comparable(run) == comparable(uninterrupted)


def test_repeated_run_accounts_epochs_and_unique_tokens(byte_dataset, tmp_path):
    run = tmp_path / "run"
    res = run_cli(
        "train",
        "--data",
        str(byte_dataset),
        "--out",
        str(run),
        "--steps",
        "40",
        "--batch-size",
        "4",
        "--epochs",
        "4",
        "--log-every",
        "5",
        *TINY,
    )
    assert res.returncode == 0, res.stderr
    lines = read_metrics(run)
    pool_tokens = 40 * 4 // 4 * 64
    assert lines[-1]["epoch"] == pytest.approx(4.0)
    assert lines[-1]["unique_tokens"] == pool_tokens
    assert lines[-1]["tokens"] == 4 * pool_tokens
    assert all(line["unique_tokens"] == min(line["tokens"], pool_tokens) for line in lines)


def test_wall_clock_budget_stops_on_time_with_a_final_evaluation(byte_dataset, tmp_path):
    run = tmp_path / "run"
    res = run_cli(
        "train",
        "--data",
        str(byte_dataset),
        "--out",
        str(run),
        "--time",
        "3s",
        "--batch-size",
        "8",
        *TINY,
    )
    assert res.returncode == 0, res.stderr
    last = read_metrics(run)[-1]
    assert "val_loss" in last and 3.0 <= last["wall_s"] < 6.0


def test_nan_loss_is_a_clear_error(byte_dataset, tmp_path):
    res = run_cli(
        "train",
        "--data",
        str(byte_dataset),
        "--out",
        str(tmp_path / "r"),
        "--steps",
        "30",
        "--lr",
        "1e12",
        "--grad-clip",
        "0",
        "--log-every",
        "1",
        "--batch-size",
        "4",
        *TINY,
    )
    assert res.returncode == 2
    assert "loss became" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--n-head", "3", "--d-model", "64"], "must divide d_model"),
        (["--tokens", "100"], "smaller than one batch"),
        (["--schedule", "cosin"], "unknown schedule"),
        ([], "exactly one budget"),
        (["--steps", "10", "--tokens", "1M"], "exactly one budget"),
        (["--steps", "100000000"], "unique tokens"),
        (["--tokens", "2 apples"], "cannot read"),
    ],
)
def test_config_mistakes_get_one_sentence(byte_dataset, tmp_path, extra, needle):
    base = ["train", "--data", str(byte_dataset), "--out", str(tmp_path / "r"), "--quiet"]
    res = run_cli(*base, *extra)
    assert res.returncode == 2
    assert needle in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_missing_or_unprepared_data_and_existing_run(byte_dataset, tmp_path):
    res = run_cli(
        "train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r"), "--steps", "5"
    )
    assert res.returncode == 2 and "does not exist" in res.stderr
    (tmp_path / "empty").mkdir()
    res = run_cli(
        "train", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "r"), "--steps", "5"
    )
    assert res.returncode == 2 and "not a prepared dataset" in res.stderr
    run = tmp_path / "run"
    args = [
        "train",
        "--data",
        str(byte_dataset),
        "--out",
        str(run),
        "--steps",
        "3",
        "--batch-size",
        "2",
        *TINY,
    ]
    assert run_cli(*args).returncode == 0
    res = run_cli(*args)
    assert res.returncode == 2 and "--resume" in res.stderr
    res = run_cli(*args, "--resume", "--lr", "0.1")
    assert res.returncode == 2 and "optim.lr" in res.stderr


def test_train_help_explains_every_flag():
    res = run_cli("train", "--help")
    assert res.returncode == 0
    from oneepoch.commands.train import TRAIN_FLAGS

    for flag, *_ in TRAIN_FLAGS:
        assert flag in res.stdout
    for flag in ("--tokens", "--steps", "--time", "--resume", "--config", "--compile"):
        assert flag in res.stdout


def flip_middle(path: Path, n: int = 64) -> None:
    raw = bytearray(path.read_bytes())
    mid = len(raw) // 2
    raw[mid : mid + n] = bytes(b ^ 0xFF for b in raw[mid : mid + n])
    path.write_bytes(bytes(raw))


@helpers.slow("~30 s or more on a 2-core CPU; CI stays within its time")
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(
    byte_dataset, uninterrupted, tmp_path
):
    run = tmp_path / "run"
    args = ["train", "--data", str(byte_dataset), "--out", str(run), *RESUME_ARGS]
    res = run_cli(*args, "--until-step", "50")
    assert res.returncode == 0, res.stderr
    ckpts = sorted((run / "checkpoints").glob("step_*"))
    assert [c.name for c in ckpts] == ["step_00000049", "step_00000050"]
    for c in ckpts:
        assert json.loads((c / "checksums.json").read_text())["sha256"].keys() == {
            "model.safetensors",
            "state.safetensors",
            "state.json",
        }
    flip_middle(ckpts[-1] / "model.safetensors")
    res = run_cli(*args, "--resume")
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert (
        "warning: checkpoint step_00000050 (the checksum of model.safetensors differs from the "
        "one written) of " in res.stderr
    ), res.stderr
    assert "resuming from the previous good one, step_00000049 (step 49)" in res.stderr
    assert comparable(run) == comparable(uninterrupted)
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed"
    assert (
        info["data"]["fingerprint"]
        == json.loads((uninterrupted / "run.json").read_text())["data"]["fingerprint"]
    )


def test_resume_on_a_folder_without_a_run_says_it_starts_one(byte_dataset, tmp_path):
    run = tmp_path / "new"
    args = ["train", "--data", str(byte_dataset), "--out", str(run), "--steps", "3", *TINY]
    res = run_cli(*args, "--batch-size", "2", "--resume")
    assert res.returncode == 0, res.stderr
    assert f"note: {run} holds no run yet, so --resume starts a new one there." in res.stderr
    assert json.loads((run / "run.json").read_text())["status"] == "completed"
    assert not (run / ".oneepoch.lock").exists()
