"""Fault injection: SIGKILL `oneepoch prepare` at random moments while it rebuilds a complete
dataset. Whenever it dies, the dataset must be the complete old one or the complete new one
(every checksum verified), never a mixture and never gone.

Each run of the suite draws new moments; the seed is printed (pytest -s) and is in every
failure message, and ONEEPOCH_FAULT_SEED=N replays a run.
"""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

from helpers import launch, make_corpus
from oneepoch.data.dataset import dataset_fingerprint, open_dataset

TRIALS = 6


def prepare_args(corpus, out, seed):
    return [
        "prepare",
        *("--source", str(corpus), "--out", str(out), "--tokenizer", "bytes"),
        *("--val-fraction", "0.1", "--shard-tokens", "20000", "--seed", str(seed), "--quiet"),
    ]


def run_to_end(args) -> float:
    started = time.perf_counter()
    proc = launch(args)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return time.perf_counter() - started


def fingerprint(out) -> str:
    return open_dataset(out, verify_checksums=True).fingerprint


def test_sigkill_during_prepare_leaves_the_old_or_the_new_dataset(tmp_path):
    seed = int(os.environ.get("ONEEPOCH_FAULT_SEED", random.randrange(2**32)))
    print(f"fault-injection seed {seed} (ONEEPOCH_FAULT_SEED={seed} replays it)")
    rng = random.Random(seed)
    corpus = make_corpus(tmp_path / "corpus", n=3000)
    out = tmp_path / "data"
    # the two datasets a trial can end with: the same text split with seed 0 or seed 1
    prints = {}
    for split_seed in (1, 0):
        duration = run_to_end(prepare_args(corpus, out, split_seed))
        prints[split_seed] = fingerprint(out)
    assert prints[0] != prints[1]
    (out / "notes.txt").write_text("the user's own file")
    current, outcomes = 0, []
    for trial in range(TRIALS):
        target = 1 - current
        # half the kills anywhere, half near the end, where the new dataset is swapped in
        at = rng.uniform(0, duration) if trial % 2 else rng.uniform(0.7, 1.1) * duration
        proc = launch(prepare_args(corpus, out, target))
        time.sleep(at)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=120)
        where = f"seed {seed}, trial {trial}, kill after {at:.3f} s (rc {proc.returncode})"
        got = fingerprint(out)  # raises if the dataset is incomplete or damaged
        assert got in (prints[current], prints[target]), f"a third dataset: {where}"
        current = 0 if got == prints[0] else 1
        outcomes.append("new" if current == target else "old")
    print(f"outcomes: {outcomes}")
    # a complete run afterwards cleans up whatever the kills left beside and puts the
    # user's file back where it was
    run_to_end(prepare_args(corpus, out, 0))
    assert fingerprint(out) == prints[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "data"], f"seed {seed}"
    assert (out / "notes.txt").read_text() == "the user's own file", f"seed {seed}"
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], f"seed {seed}"


@pytest.mark.parametrize("moment", ["before-swap", "after-swap"])
def test_kill_around_the_swap_leaves_a_complete_dataset(tmp_path, monkeypatch, moment):
    """The two moments that matter, made exact in-process: dying just before the atomic
    exchange, and just after it (old dataset and the user's file still beside)."""
    from oneepoch.data import prepare as prepare_mod

    corpus = make_corpus(tmp_path / "corpus", n=30)
    out = tmp_path / "data"
    old = prepare_mod.prepare([str(corpus)], out, tokenizer="bytes", val_fraction=0.3)
    (out / "notes.txt").write_text("mine")

    class Killed(BaseException):
        pass

    real_exchange, real_discard = prepare_mod._exchange, prepare_mod._discard

    def exchange(a, b):
        if moment == "before-swap":
            raise Killed
        assert real_exchange(a, b)
        raise Killed

    def discard(folder, target):
        pass  # a killed process cleans nothing up

    monkeypatch.setattr(prepare_mod, "_exchange", exchange)
    monkeypatch.setattr(prepare_mod, "_discard", discard)
    with pytest.raises(Killed):
        prepare_mod.prepare([str(corpus)], out, tokenizer="bytes", val_fraction=0.3, seed=5)
    ds = open_dataset(out, verify_checksums=True)
    new_expected = moment == "after-swap"
    assert (ds.fingerprint != dataset_fingerprint(old)) == new_expected
    monkeypatch.setattr(prepare_mod, "_exchange", real_exchange)
    monkeypatch.setattr(prepare_mod, "_discard", real_discard)
    prepare_mod.prepare([str(corpus)], out, tokenizer="bytes", val_fraction=0.3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "data"]
    assert (out / "notes.txt").read_text() == "mine"
    assert open_dataset(out, verify_checksums=True).fingerprint == dataset_fingerprint(old)


class _Killed(BaseException):
    pass


def _tiny_state(step: int):
    import torch

    g = torch.Generator().manual_seed(step)
    model = {"w": torch.randn(64, 64, generator=g), "b": torch.randn(64, generator=g)}
    train_state = {"step": step, "optimizer": {"m": torch.randn(64, 64, generator=g)}}
    return model, train_state


def test_a_kill_at_any_moment_of_a_checkpoint_write_leaves_a_verified_checkpoint(
    tmp_path, monkeypatch
):
    """Every call `checkpoint.save` makes to the file system is a moment it can die at: die
    just before each one (nothing after it runs, no cleanup, as with SIGKILL) and the
    newest checkpoint found is complete, passes its checksums and is the old or the new
    one; the next save goes through and leaves no debris."""
    import shutil

    import torch

    from oneepoch import checkpoint

    calls = {"n": 0, "kill_at": -1, "dead": False}

    def mortal(real):
        def wrapper(*args, **kwargs):
            if calls["dead"]:
                return None  # a dead process does nothing more (its cleanup never runs)
            calls["n"] += 1
            if calls["n"] == calls["kill_at"]:
                calls["dead"] = True
                raise _Killed
            return real(*args, **kwargs)

        return wrapper

    patched = [
        (checkpoint, "save_file"),
        (checkpoint, "write_atomic"),
        (checkpoint, "fsync_dir"),
        (checkpoint.os, "replace"),
        (checkpoint.os, "fsync"),
        (shutil, "rmtree"),
    ]
    for owner, name in patched:
        monkeypatch.setattr(owner, name, mortal(getattr(owner, name)))

    root = tmp_path / "checkpoints"
    checkpoint.save(root, 1, *_tiny_state(1))
    checkpoint.save(root, 2, *_tiny_state(2))
    moments = calls["n"] // 2 + 4  # calls of one save, and then some
    step = 2
    for kill_at in range(1, moments + 1):
        calls.update(n=0, kill_at=kill_at, dead=False)
        try:
            checkpoint.save(root, step + 1, *_tiny_state(step + 1))
        except _Killed:
            pass
        calls.update(kill_at=-1, dead=False)
        last = checkpoint.latest(root)
        model, state = checkpoint.load(last)  # verifies the checksums
        assert state["step"] in (step, step + 1), kill_at
        assert torch.equal(model["w"], _tiny_state(state["step"])[0]["w"]), kill_at
        step = state["step"]
    checkpoint.save(root, step + 1, *_tiny_state(step + 1))
    names = sorted(p.name for p in root.iterdir())
    assert names == ["LATEST", f"step_{step:08d}", f"step_{step + 1:08d}"], names
