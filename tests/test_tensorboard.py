"""`oneepoch tensorboard`: a run's metrics.jsonl as TensorBoard scalars, read back by
TensorBoard's own EventAccumulator."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import helpers
from helpers import FORECASTING, cli_env, read_forecasts, read_metrics, read_records, run_cli

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

TAGS = {"loss/train", "loss/val", "lr", "tokens_per_s", "mfu"}
FORECAST_TAGS = ("forecast/final_loss", "forecast/final_loss_low", "forecast/final_loss_high")


@pytest.fixture(scope="module")
def run(byte_dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tb") / "run"
    args = ["--steps", "12", "--batch-size", "4", "--log-every", "2", "--dtype", "float32"]
    res = run_cli("train", "--data", str(byte_dataset), "--out", str(out), *args, *FORECASTING)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def read_back(log_dir: Path) -> dict[str, list[tuple[float, int, float]]]:
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {
        tag: [(e.wall_time, e.step, e.value) for e in acc.Scalars(tag)]
        for tag in acc.Tags()["scalars"]
    }


def expected(run: Path, forecasts: bool = True) -> dict[str, list[tuple[float, int, float]]]:
    info = json.loads((run / "run.json").read_text())
    peak = info["peak_flops"]["value"] * info["peak_flops"]["devices"]
    want: dict[str, list] = {tag: [] for tag in TAGS}
    for record in sorted(read_forecasts(run) if forecasts else [], key=lambda r: r["step"]):
        at = (record["wall_s"], record["step"])
        for tag, value in zip(FORECAST_TAGS, (record["forecast"], *record["interval"])):
            want.setdefault(tag, []).append((*at, value))
    prev_tokens = prev_wall = 0.0
    for line in read_metrics(run):
        at = (line["wall_s"], line["step"])
        want["loss/train"].append((*at, line["train_loss"]))
        want["lr"].append((*at, line["lr"]))
        if "val_loss" in line:
            want["loss/val"].append((*at, line["val_loss"]))
        tps = (line["tokens"] - prev_tokens) / (line["wall_s"] - prev_wall)
        want["tokens_per_s"].append((*at, tps))
        want["mfu"].append((*at, tps * info["flops_per_token"] / peak))
        prev_tokens, prev_wall = line["tokens"], line["wall_s"]
    return want


def assert_scalars_equal(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for tag, points in want.items():
        assert [p[1] for p in got[tag]] == [p[1] for p in points], tag
        for (gw, _, gv), (ww, _, wv) in zip(got[tag], points):
            assert gv == pytest.approx(wv, rel=1e-6), tag  # simple_value is a float32
            assert gw == pytest.approx(ww, abs=1e-6), tag


def test_scalars_equal_the_metrics(run, tmp_path):
    from oneepoch.tensorboard import write_events

    result = write_events(run, tmp_path / "logs")
    want = expected(run)
    assert result["lines"] == len(read_records(run))
    assert want["forecast/final_loss"], "the run made no live forecast"
    assert result["scalars"] == {tag: len(p) for tag, p in want.items()}
    assert_scalars_equal(read_back(tmp_path / "logs"), want)
    assert 0 < min(v for _, _, v in want["mfu"]) and max(v for _, _, v in want["mfu"]) < 1


def test_cli_converts_again_in_place_without_torch(run, tmp_path):
    logdir = tmp_path / "logs"
    (logdir / "run").mkdir(parents=True)
    (logdir / "run" / "notes.txt").write_text("mine")
    code = (
        "import sys\n"
        "from oneepoch.cli import main\n"
        f"for _ in range(2): assert main(['tensorboard', {str(run)!r}, '--logdir', "
        f"{str(logdir)!r}]) == 0\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=120
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "tensorboard --logdir" in res.stdout
    files = sorted(p.name for p in (logdir / "run").iterdir())
    assert len(files) == 2 and "notes.txt" in files  # the second conversion replaced the first
    assert_scalars_equal(read_back(logdir / "run"), expected(run))


def test_live_log_with_a_resume_purges_the_truncated_steps(run, tmp_path):
    """What the trainer would do: one write per metrics line; after --resume from step k,
    a new EventLog(purge_step=k) so the points the resume truncated disappear."""
    from oneepoch.tensorboard import EventLog

    lines = read_metrics(run)
    info = json.loads((run / "run.json").read_text())
    first = EventLog(tmp_path, info["flops_per_token"], info["peak_flops"])
    for line in lines:
        first.write({**line, "train_loss": 99.0})  # a timeline that the resume replaces
    first.close()
    cut = lines[3]["step"]
    start = lines[2]["tokens"], lines[2]["wall_s"]  # the checkpoint it resumes from
    second = EventLog(tmp_path, info["flops_per_token"], info["peak_flops"], cut, start)
    for line in lines[3:]:
        second.write(line)
    second.close()
    assert_scalars_equal(
        {k: v for k, v in read_back(tmp_path).items() if k != "loss/train"},
        {k: v for k, v in expected(run, forecasts=False).items() if k != "loss/train"},
    )
    got = read_back(tmp_path)["loss/train"]
    assert [s for _, s, _ in got] == [x["step"] for x in lines]
    assert [v for _, _, v in got] == [99.0] * 3 + [
        pytest.approx(x["train_loss"], rel=1e-6) for x in lines[3:]
    ]


def test_bad_input(tmp_path, capsys):
    from oneepoch.cli import main

    assert main(["tensorboard", str(tmp_path), "--logdir", str(tmp_path / "logs")]) != 0
    err = capsys.readouterr().err.strip()
    assert "metrics.jsonl is missing" in err and "\n" not in err
    assert not (tmp_path / "logs").exists()


@helpers.slow("~30 s or more on a 2-core CPU; CI stays within its time")
def test_train_tensorboard_live_equals_the_metrics_across_resumes(byte_dataset, tmp_path):
    """`train --tensorboard DIR` writes the scalars while training; a paused run resumed
    (the setting kept in config.toml) and a run resumed from an older checkpoint (the lines
    after it truncated and recomputed, as after a kill) leave one point per step, equal to
    metrics.jsonl's."""
    from oneepoch import checkpoint

    out, tb = tmp_path / "run", tmp_path / "tb"
    args = ["--data", str(byte_dataset), "--out", str(out), "--steps", "12", "--batch-size", "4"]
    args += ["--log-every", "2", "--checkpoint-every", "4", "--dtype", "float32", *FORECASTING]
    res = run_cli("train", *args, "--tensorboard", str(tb), "--until-step", "6")
    assert res.returncode == 0, res.stderr[-3000:]
    assert read_back(tb / "run")["lr"][-1][1] == 6  # live: what ran so far is there
    res = run_cli("train", *args, "--resume")  # config.toml keeps log.tensorboard
    assert res.returncode == 0, res.stderr[-3000:]
    assert_scalars_equal(read_back(tb / "run"), expected(out))

    # As if killed after the step-12 line but before its checkpoint: resume from step 8.
    shutil.rmtree(checkpoint.latest(out / "checkpoints"))
    info = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**info, "status": "interrupted"}))
    res = run_cli("train", *args, "--resume", "--tensorboard", str(tb))
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(list((tb / "run").iterdir())) == 3  # one event file per session
    steps = [line["step"] for line in read_metrics(out)]
    assert steps == sorted(set(steps)) and steps[-1] == 12
    got = read_back(tb / "run")
    assert [step for _, step, _ in got["lr"]] == steps  # one point per step, none twice
    assert_scalars_equal(got, expected(out))
