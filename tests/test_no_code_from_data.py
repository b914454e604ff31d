"""Nothing executes from data: a run folder someone else wrote is read as tensors and JSON.

A pickled object whose ``__reduce__`` runs a shell command is planted wherever a checkpoint
could carry one (the old ``state.pt``, beside a current checkpoint, in place of its data
files, with checksums rewritten to match, as whoever writes a folder can), then `sample`,
`export`, `train --resume`, `upgrade-checkpoints` and a `reproduce` rerun are run on it: the
command must not be run, and each refuses in one sentence, leaving the folder as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch

from helpers import TINY, launch, read_metrics, run_cli

ARGS = ["--steps", "20", "--batch-size", "4", "--checkpoint-every", "5", "--dropout", "0.1"]
ARGS += TINY


class Payload:
    """Unpickling this runs a shell command that creates ``sentinel``."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"echo ran > {self.sentinel}",))


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def rewrite_checksums(ckpt: Path) -> None:
    names = [p.name for p in ckpt.iterdir() if p.name != "checksums.json"]
    sums = {n: hashlib.sha256((ckpt / n).read_bytes()).hexdigest() for n in names}
    (ckpt / "checksums.json").write_text(json.dumps({"sha256": sums}))


def as_old_checkpoint(ckpt: Path, state) -> None:
    """What oneepoch before 0.2 wrote: the training state pickled in state.pt."""
    for name in ("state.safetensors", "state.json"):
        (ckpt / name).unlink()
    torch.save(state, ckpt / "state.pt")
    rewrite_checksums(ckpt)


def plant_old_format(ckpt: Path, sentinel: Path) -> None:
    as_old_checkpoint(ckpt, {"step": 5, "optimizer": Payload(sentinel)})


def plant_beside_current(ckpt: Path, sentinel: Path) -> None:
    torch.save({"step": 5, "x": Payload(sentinel)}, ckpt / "state.pt")
    rewrite_checksums(ckpt)


def plant_in_data_files(ckpt: Path, sentinel: Path) -> None:
    for name in ("state.safetensors", "state.json", "model.safetensors"):
        torch.save(Payload(sentinel), ckpt / name)
    rewrite_checksums(ckpt)


PLANTS = {
    "old-format": plant_old_format,
    "beside-current": plant_beside_current,
    "in-data-files": plant_in_data_files,
}


@pytest.fixture(scope="module")
def paused_run(byte_dataset, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("paused") / "run"
    res = run_cli(
        "train", "--data", str(byte_dataset), "--out", str(run), *ARGS, "--until-step", "10"
    )
    assert res.returncode == 0, res.stderr
    return run


@pytest.fixture(scope="module")
def reference(byte_dataset, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("reference") / "run"
    res = run_cli("train", "--data", str(byte_dataset), "--out", str(run), *ARGS)
    assert res.returncode == 0, res.stderr
    return run


def test_the_state_comes_back_exactly_from_tensors_and_json():
    from oneepoch import statecodec

    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    state = {
        "optimizer": opt.state_dict(),  # int keys, tuple betas, 0-d step tensors
        "acc": torch.tensor(1.5, dtype=torch.bfloat16),
        "loss_sum": float("nan"),
        "worst": float("-inf"),
        "config": {"model": {"d_model": 64}, "__tensor__": "a key that looks like a tag"},
        "world_size": 1,
    }
    tensors, plain = statecodec.split(state)
    text = statecodec.dumps(plain)
    json.loads(text)  # standard JSON: no NaN literals
    back = statecodec.join(statecodec.loads(text), tensors)
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.95)
    assert back["optimizer"]["state"].keys() == opt.state_dict()["state"].keys()
    for k, st in opt.state_dict()["state"].items():
        for name, t in st.items():
            assert torch.equal(back["optimizer"]["state"][k][name], t), (k, name)
    assert back["acc"].dtype == torch.bfloat16 and back["acc"].item() == 1.5
    assert back["loss_sum"] != back["loss_sum"] and back["worst"] == float("-inf")
    assert back["config"] == state["config"] and back["world_size"] == 1

    with pytest.raises(TypeError, match="cannot hold 'Payload'"):
        statecodec.split({"x": Payload(Path("never"))})
    for bad in ({"__tensor__": "t99"}, {"__tuple__": 3, "b": 1}, {"__items__": [[1]]}):
        with pytest.raises(ValueError):
            statecodec.join(bad, tensors)


COMMANDS = {
    "sample": lambda run, tmp: ["sample", str(run), "--max-new-tokens", "5"],
    "export": lambda run, tmp: ["export", str(run), str(tmp / "hf")],
    "resume": lambda run, tmp: ["train", "--data", "{data}", "--out", str(run), *ARGS, "--resume"],
    "upgrade": lambda run, tmp: ["upgrade-checkpoints", str(run)],
}


@pytest.mark.parametrize("plant", PLANTS)
@pytest.mark.parametrize("command", COMMANDS)
def test_a_planted_pickle_runs_nothing(paused_run, byte_dataset, tmp_path, plant, command):
    run, sentinel = tmp_path / "run", tmp_path / "SENTINEL"
    shutil.copytree(paused_run, run)
    for ckpt in (run / "checkpoints").glob("step_*"):
        PLANTS[plant](ckpt, sentinel)
    before = digest(run)
    args = [a.replace("{data}", str(byte_dataset)) for a in COMMANDS[command](run, tmp_path)]
    res = run_cli(*args)
    assert not sentinel.exists(), f"the planted command ran: {res.stderr}"
    assert digest(run) == before
    if (plant, command) == ("in-data-files", "upgrade"):
        assert res.returncode == 0, res.stderr  # nothing old to convert; nothing read either
        return
    err = res.stderr.strip()
    assert res.returncode == 2 and "Traceback" not in err and "\n" not in err, err
    assert err.startswith("error: "), err
    if plant != "in-data-files":
        assert "oneepoch upgrade-checkpoints" in err or "not converted" in err, err
    assert not (tmp_path / "hf").exists()


def test_an_old_checkpoint_is_refused_then_converted_and_resumes_exactly(
    paused_run, reference, byte_dataset, tmp_path
):
    """A genuine checkpoint of an older version: refused in one sentence, converted by the
    explicit command, then the run continues bit for bit as if never interrupted."""
    from oneepoch import checkpoint

    run = tmp_path / "run"
    shutil.copytree(paused_run, run)
    ckpts = sorted((run / "checkpoints").glob("step_*"))
    for ckpt in ckpts:
        _, state = checkpoint.load(ckpt)
        as_old_checkpoint(ckpt, state)
    args = ["train", "--data", str(byte_dataset), "--out", str(run), *ARGS, "--resume"]
    res = run_cli(*args)
    assert res.returncode == 2 and "oneepoch upgrade-checkpoints" in res.stderr, res.stderr

    res = run_cli("upgrade-checkpoints", str(run))
    assert res.returncode == 0, res.stderr
    assert f"{len(ckpts)} checkpoint(s) converted, 0 already current" in res.stdout
    assert not list((run / "checkpoints").rglob("state.pt"))
    res = run_cli("upgrade-checkpoints", str(run))
    assert "0 checkpoint(s) converted" in res.stdout

    res = run_cli(*args)
    assert res.returncode == 0, res.stderr

    def clockless(r):
        return [{k: v for k, v in x.items() if k != "wall_s"} for x in read_metrics(r)]

    assert clockless(run) == clockless(reference)


def test_a_reproduce_rerun_over_a_planted_job_runs_nothing(byte_dataset, tmp_path):
    """`reproduce` resumes an interrupted job's runs from their checkpoints: a pickle planted
    in one is refused as in a single run."""
    out, sentinel = tmp_path / "job", tmp_path / "SENTINEL"
    args = ["reproduce", "--preset", "micro", "--data", str(byte_dataset), "--out", str(out)]
    proc = launch(args)
    deadline = time.time() + 300
    while time.time() < deadline and not list(out.glob("runs/*/*/checkpoints/step_*/state.json")):
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        time.sleep(0.05)
    time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    planted = [c for c in out.glob("runs/*/*/checkpoints/step_*") if (c / "state.json").exists()]
    assert planted, "no checkpoint was written before the kill"
    for ckpt in planted:
        plant_old_format(ckpt, sentinel)
    res = run_cli(*args, timeout=600)
    assert not sentinel.exists(), f"the planted command ran: {res.stderr}"
    err = res.stderr.strip().splitlines()[-1]
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "oneepoch upgrade-checkpoints" in err, err
