"""Hostile use through the real command line: each case must end in one sentence naming the
problem, a non-zero exit, no traceback, and leave what was complete before byte-for-byte as
it was.

To add a case, append a ``Case`` to ``CASES``: the command's arguments (``{data}``, ``{run}``,
``{other_data}``, ``{same_vocab}``, ``{corpus}``, ``{records}``, ``{tmp}``, ``{outside}`` are
filled in; ``{tmp}`` is the case's own folder), a regular expression its error must match, and
optionally a ``setup`` called with the ``World`` and the case's folder before the command
runs, which may return a function to call after it (to stop a helper process, say).
``World`` holds a complete dataset (``data``, bytes tokenizer), a complete tiny run trained on
it (``run``) and one paused half-way (``paused``, copied by the setups that resume). Those,
the case's folder as the setup left it, and a folder outside all of them (``{outside}``, with
a sentinel file: the target of the links the link cases plant) are checked unchanged
afterwards.

A case runs in this process through the command line's own entry point (``oneepoch.cli``),
which is what `python -m oneepoch` runs, so a hundred cases take seconds; ``isolated`` runs it
in a fresh process, for a case that may hang or crash natively (as it did before its fix) or
that needs its own environment (``env``) or privileges (``unprivileged``: without root's
right to read any file, so that permissions apply).
"""

from __future__ import annotations

import base64
import contextlib
import gc
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import pytest

from helpers import cli_env, make_corpus, run_cli
from oneepoch.data.prepare import prepare

TINY_RUN = [
    "--n-layer",
    "1",
    "--n-head",
    "1",
    "--d-model",
    "32",
    "--seq-len",
    "32",
    "--no-forecast",
]
TINY_RUN += ["--eval-tokens", "1024", "--steps", "5", "--quiet"]


@dataclass
class World:
    root: Path
    corpus: Path  # 200 small text files
    data: Path  # a complete dataset of them (bytes tokenizer)
    run: Path  # a complete 5-step run trained on `data`
    other_data: Path  # the same text with a BPE tokenizer
    records: Path  # a JSONL file whose records hold their text under "text"
    paused: Path  # the run of `run`, paused at step 3 (checkpoints at steps 2 and 3)
    same_vocab: Path  # the same text, another tokenizer with the bytes tokenizer's 257 ids

    def fill(self, arg: str, tmp: Path) -> str:
        return arg.format(
            data=self.data,
            run=self.run,
            other_data=self.other_data,
            same_vocab=self.same_vocab,
            corpus=self.corpus,
            records=self.records,
            tmp=tmp,
            outside=outside_of(tmp),
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("hostile")
    corpus = make_corpus(root / "corpus", n=200)
    data, other, same = root / "data", root / "other-data", root / "same-vocab"
    prepare([str(corpus)], data, tokenizer="bytes")
    prepare([str(corpus)], other, vocab_size=300)
    # tiktoken ranks of the 256 single bytes, shifted by one: 257 ids, as bytes has
    ranks = root / "shifted.tiktoken"
    ranks.write_text(
        "".join(f"{base64.b64encode(bytes([b])).decode()} {(b + 1) % 256}\n" for b in range(256))
    )
    prepare([str(corpus)], same, tokenizer=str(ranks))
    records = root / "records.jsonl"
    records.write_text(
        "".join(json.dumps({"text": f"record {i}", "id": i}) + "\n" for i in range(9))
    )
    run, paused = root / "run", root / "paused"
    res = run_cli("train", "--data", str(data), "--out", str(run), *TINY_RUN)
    assert res.returncode == 0, res.stderr
    res = run_cli(
        "train", "--data", str(data), "--out", str(paused), *TINY_RUN, "--until-step", "3"
    )
    assert res.returncode == 0, res.stderr
    return World(root, corpus, data, run, other, records, paused, same)


def outside_of(tmp: Path) -> Path:
    """A folder beside the case's own that no command of the case is given."""
    return tmp.parent / f"{tmp.name}-outside"


def tree_digest(root: Path) -> dict[str, str]:
    """Every file and folder under ``root``, with a hash of each file's bytes."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "link:" + os.readlink(path)
        elif path.is_dir():
            out[rel] = "dir"
        elif not path.is_file():
            out[rel] = "not a regular file"  # a FIFO, say: reading it would block
        else:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


# --- setups -------------------------------------------------------------------------


def copy_data(world: World, tmp: Path) -> Path:
    shutil.copytree(world.data, tmp / "data")
    return tmp / "data"


def edit_manifest(change: Callable[[dict], None]):
    def setup(world, tmp):
        path = copy_data(world, tmp) / "manifest.json"
        manifest = json.loads(path.read_text())
        change(manifest)
        path.write_text(json.dumps(manifest))

    return setup


def flip_shard_byte(world, tmp):
    shard = copy_data(world, tmp) / "train_00000.bin"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))


# a run that diverged: every evaluation logged a NaN validation loss (written as null)
NAN_METRICS = (
    '{"step": 1, "tokens": 64, "val_loss": null}\n{"step": 2, "tokens": 128, "val_loss": null}\n'
)


def files(**contents: str):
    def setup(world, tmp):
        for name, text in contents.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text)

    return setup


def hold_lock(folder, what: str):
    """Another process holds ``folder`` (as a prepare or train in progress would)."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\nfrom oneepoch.locking import hold\n"
            "with hold(sys.argv[1], sys.argv[2]):\n    print('held', flush=True); sys.stdin.read()",
            str(folder),
            what,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    assert holder.stdout.readline().strip() == "held"

    def stop():
        holder.stdin.close()
        assert holder.wait(timeout=60) == 0
        holder.stdout.close()

    return stop


def hold_lock_on_data(world, tmp):
    return hold_lock(world.data, "prepare")


def hold_lock_on_run(world, tmp):
    return hold_lock(world.run, "train")


def other_text_same_tokenizer(world, tmp):
    """The dataset prepared again, with the same (bytes) tokenizer, from other text."""
    corpus = make_corpus(tmp / "corpus2", n=200, seed=1)
    prepare([str(corpus)], tmp / "d2", tokenizer="bytes")
    paused_run(world, tmp)  # trained on the original dataset


def paused_run(world, tmp) -> Path:
    """A copy of a run paused at step 3 (checkpoints at steps 2 and 3)."""
    shutil.copytree(world.paused, tmp / "run", symlinks=True)
    return tmp / "run"


def flip_middle(path: Path, n: int = 64) -> None:
    raw = bytearray(path.read_bytes())
    mid = len(raw) // 2
    raw[mid : mid + n] = bytes(b ^ 0xFF for b in raw[mid : mid + n])
    path.write_bytes(bytes(raw))


def damage_every_checkpoint(world, tmp):
    run = paused_run(world, tmp)
    ckpts = sorted((run / "checkpoints").glob("step_*"))
    assert len(ckpts) == 2
    for ckpt in ckpts:
        flip_middle(ckpt / "model.safetensors")


# --- setups of the cases of issue 23 ----------------------------------------------------


def link_in_run(name: str, to_outside: str | None = None):
    """A paused run whose ``name`` is a symbolic link to a file or folder outside it: the
    sentinel, or ``to_outside``, where the run's own ``name`` was moved."""

    def setup(world, tmp):
        run, outside = paused_run(world, tmp), outside_of(tmp)
        target = outside / "sentinel.txt"
        if to_outside:
            target = outside / to_outside
            shutil.move(run / name, target)
            if target.is_dir():  # someone's file inside a checkpoint there
                step = target if target.name.startswith("step_") else next(target.glob("step_*"))
                (step / "theirs.txt").write_text("keep me")
        elif (run / name).exists():
            (run / name).unlink()
        (run / name).symlink_to(target)

    return setup


def folder_in_run(name: str):
    """A paused run where ``name`` is a folder (of someone's files)."""

    def setup(world, tmp):
        path = paused_run(world, tmp) / name
        if path.exists():
            path.unlink()
        path.mkdir()
        (path / "theirs.txt").write_text("keep me")

    return setup


def lock_link_in_data(world, tmp):
    (copy_data(world, tmp) / ".oneepoch.lock").symlink_to(outside_of(tmp) / "sentinel.txt")


def tokenizer_outside(relative: bool):
    """A BPE dataset whose manifest names a tokenizer file outside the dataset's folder."""

    def setup(world, tmp):
        data, outside = tmp / "data", outside_of(tmp)
        shutil.copytree(world.other_data, data)
        shutil.move(data / "tokenizer.json", outside / "tokenizer.json")
        manifest = json.loads((data / "manifest.json").read_text())
        path = outside / "tokenizer.json"
        manifest["tokenizer"]["file"] = os.path.relpath(path, data) if relative else str(path)
        (data / "manifest.json").write_text(json.dumps(manifest))

    return setup


def zst_records(n: int, keep: float):
    """records.jsonl.zst of ``n`` records, cut to ``keep`` of its bytes."""

    def setup(world, tmp):
        import zstandard

        text = "".join(json.dumps({"text": f"record {i} " + "word " * 40}) + "\n" for i in range(n))
        blob = zstandard.ZstdCompressor().compress(text.encode())
        (tmp / "records.jsonl.zst").write_bytes(blob[: int(len(blob) * keep)])

    return setup


SCALING_CSV = "params,tokens,loss\n" + "".join(
    f"{n:g},{d:g},{1.7 + 400 / n**0.34 + 400 / d**0.28:.5f}\n"
    for n in (1e5, 3e5, 1e6, 3e6)
    for d in (1e6, 1e7, 1e8)
)


def law(**values):
    """A law file as `scaling fit --json` writes it, with ``values`` in place."""
    params = {"E": 1.7, "A": 400.0, "B": 400.0, "alpha": 0.34, "beta": 0.28, **values}
    return json.dumps({"form": "chinchilla", **{k: {"value": v} for k, v in params.items()}})


def eval_lines(*losses: str) -> str:
    return "".join(
        f'{{"step": {i}, "tokens": {64 * i}, "val_loss": {loss}}}\n'
        for i, loss in enumerate(losses, start=1)
    )


def loop_in_folder(world, tmp):
    make_corpus(tmp / "src", n=5)
    (tmp / "src" / "loop.txt").symlink_to("loop.txt")


def unreadable(what: str):
    """A source folder holding a file (``what`` "file") or a folder nobody may read."""

    def setup(world, tmp):
        src = make_corpus(tmp / "src", n=5)
        target = src / "doc000.txt"
        if what == "folder":
            target = src / "private"
            make_corpus(target, n=2)
        os.chmod(target, 0)
        return lambda: os.chmod(target, 0o755)

    return setup


def fifo(where: str):
    def setup(world, tmp):
        folder = make_corpus(tmp / "src", n=5) if where == "folder" else tmp
        os.mkfifo(folder / "pipe.txt")

    return setup


def edit_config(old: str, new: str):
    """A paused run whose config.toml was edited after training."""

    def setup(world, tmp):
        path = paused_run(world, tmp) / "config.toml"
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new))

    return setup


class Case(NamedTuple):
    name: str
    args: list[str]
    message: str  # a regular expression the error must match
    setup: Callable | None = None
    isolated: bool = False  # in a fresh process (see the module's docstring)
    env: dict | None = None  # extra environment variables (isolated)
    unprivileged: bool = False  # without root's override of file permissions (isolated)


PREP = ["prepare", "--quiet", "--tokenizer", "bytes"]
TRAIN = ["train", "--data", "{data}", "--quiet"]
NEW_RUN = [*TRAIN, "--out", "{tmp}/r", "--steps", "5"]

LINK = r"is a symbolic link, and oneepoch does not write through links inside the folders"
RESUME = ["train", "--data", "{data}", "--out", "{tmp}/run", "--resume", "--quiet"]
LAW_PLAN = ["plan", "--unique-tokens", "1M", "--budget", "1e12", "--no-calibrate"]
SWEEP_DRY_RUN = ["sweep", "--data", "{data}", "--out", "{tmp}/s", "--budget", "1e12", "--dry-run"]
SWEEP_DRY_RUN += ["--no-calibrate"]
SCALING_FIT = ["scaling", "fit", "--csv", "{tmp}/s.csv", "--bootstrap", "0"]

# Issue 23: links that would make a command write outside its folders, data lost or mixed
# silently, tracebacks and a native crash, messages that misled.
ISSUE_23 = [
    # links planted in a run or dataset folder
    Case(
        "resume-with-metrics-jsonl-a-link-outside",
        RESUME,
        r"run/metrics.jsonl " + LINK,
        link_in_run("metrics.jsonl"),
    ),
    Case("resume-with-run-json-a-link", RESUME, r"run/run.json " + LINK, link_in_run("run.json")),
    Case(
        "resume-with-config-toml-a-link",
        RESUME,
        r"run/config.toml " + LINK,
        link_in_run("config.toml", "config.toml"),
    ),
    Case(
        "resume-with-the-lock-file-a-link",
        RESUME,
        r"run/.oneepoch.lock " + LINK,
        link_in_run(".oneepoch.lock"),
    ),
    Case(
        "prepare-with-the-lock-file-a-link",
        [*PREP, "--source", "{corpus}", "--out", "{tmp}/data"],
        r"data/.oneepoch.lock " + LINK,
        lock_link_in_data,
    ),
    Case(
        "resume-with-checkpoints-a-link-to-another-folder",
        RESUME,
        r"run/checkpoints " + LINK,
        link_in_run("checkpoints", "checkpoints"),
    ),
    Case(
        "resume-with-a-checkpoint-a-link",
        RESUME,
        r"run/checkpoints/step_00000003 " + LINK,
        link_in_run("checkpoints/step_00000003", "step_00000003"),
    ),
    Case(
        "manifest-names-a-tokenizer-outside-by-absolute-path",
        [*TRAIN[:2], "{tmp}/data", "--out", "{tmp}/r", "--steps", "5"],
        r"damaged \(tokenizer file is '/.*tokenizer.json', not a file name inside the folder\)",
        tokenizer_outside(relative=False),
    ),
    Case(
        "manifest-names-a-tokenizer-outside-by-dot-dot",
        ["sample", "{run}", "--data", "{tmp}/data"],
        r"damaged \(tokenizer file is '\.\./.*tokenizer.json', not a file name inside",
        tokenizer_outside(relative=True),
    ),
    Case(
        "manifest-names-a-shard-dot-dot",
        [*TRAIN[:2], "{tmp}/data", "--out", "{tmp}/r", "--steps", "5"],
        r"damaged \(a train shard entry is malformed \(\{'file': '\.\.'",
        edit_manifest(lambda m: m["splits"]["train"]["shards"][0].update(file="..")),
    ),
    Case(
        "manifest-names-a-shard-with-no-name",
        ["data", "inspect", "{tmp}/data", "--verify"],
        r"damaged \(a val shard entry is malformed \(\{'file': ''",
        edit_manifest(lambda m: m["splits"]["val"]["shards"][0].update(file="")),
    ),
    # data silently lost or mixed, and settings that mean nothing
    Case(
        "prepare-a-truncated-jsonl-zst",
        [*PREP, "--source", "{tmp}/records.jsonl.zst", "--out", "{tmp}/d"],
        r"records.jsonl.zst is truncated \(it ends inside a zstd frame, at byte [\d,]+\)",
        zst_records(400, keep=0.6),
    ),
    Case(
        "prepare-a-small-truncated-jsonl-zst",
        [*PREP, "--source", "{tmp}/records.jsonl.zst", "--out", "{tmp}/d"],
        r"records.jsonl.zst is truncated \(it ends inside a zstd frame",
        zst_records(3, keep=0.8),
    ),
    Case(
        "export-with-another-tokenizer-of-the-same-size",
        ["export", "{run}", "{tmp}/hf", "--data", "{same_vocab}"],
        r"same-vocab has another tokenizer than the one run .*run was trained with",
    ),
    Case(
        "scaling-fit-json-over-its-own-csv",
        [*SCALING_FIT, "--json", "{tmp}/s.csv"],
        r"s.csv is also an input of this command, and writing the output there would overwrite",
        files(**{"s.csv": SCALING_CSV}),
    ),
    Case(
        "train-tensorboard-into-a-file",
        [*NEW_RUN, "--tensorboard", "{records}"],
        r"records.jsonl is a file; give a folder for the TensorBoard logs",
    ),
    Case(
        "plan-calibration-seconds-nan",
        [*LAW_PLAN, "--calibration-seconds", "nan"],
        r"--calibration-seconds must be a finite number above 0, not nan",
    ),
    Case(
        "plan-law-with-e-nan",
        [*LAW_PLAN, "--law", "{tmp}/law.json"],
        r"law.json holds E = nan, which no scaling law has",
        files(**{"law.json": law(E="NaN")}),
    ),
    Case(
        "plan-law-with-alpha-and-beta-zero",
        [*LAW_PLAN, "--rule", "fitted:{tmp}/law.json"],
        r"law.json holds alpha = 0, beta = 0, which no scaling law has",
        files(**{"law.json": law(alpha=0, beta=0)}),
    ),
    Case(
        "train-checkpoint-every-negative",
        [*NEW_RUN, "--checkpoint-every", "-1"],
        r"train.checkpoint_every must be at least 0 \(0: chosen for the run\), got -1; change "
        r"the flag --checkpoint-every",
    ),
    Case(
        "train-eval-tokens-zero",
        [*NEW_RUN, "--eval-tokens", "0"],
        r"train.eval_tokens must be at least 1, got 0",
    ),
    Case(
        "train-until-step-zero",
        [*NEW_RUN, "--until-step", "0"],
        r"--until-step 0 would pause the run before its first step",
    ),
    Case(
        "fit-negative-losses",
        ["fit", "{tmp}/negrun"],
        r"no validation loss in .* is a positive finite number \(of 3 evaluations, 0 NaN or "
        r"missing, 1 infinite, 2 zero or negative\)",
        files(**{"negrun/metrics.jsonl": eval_lines("-1.5", "0", "Infinity")}),
    ),
    # tracebacks, and the native crash
    Case(
        "prepare-over-a-symlink-loop",
        [*PREP, "--source", "{tmp}/src", "--out", "{tmp}/d"],
        r"loop.txt is a symbolic link that leads nowhere \(Too many levels of symbolic links: "
        r"broken or a loop\)",
        loop_in_folder,
    ),
    Case(
        "prepare-a-source-that-is-a-symlink-loop",
        [*PREP, "--source", "{tmp}/src/loop.txt", "--out", "{tmp}/d"],
        r"loop.txt is a symbolic link that leads nowhere",
        loop_in_folder,
    ),
    Case(
        "prepare-over-an-unreadable-file",
        [*PREP, "--source", "{tmp}/src", "--out", "{tmp}/d"],
        r"cannot read .*doc000.txt \(Permission denied\); make it readable or leave it out",
        unreadable("file"),
        unprivileged=True,
    ),
    Case(
        "prepare-over-an-unreadable-folder",
        [*PREP, "--source", "{tmp}/src", "--out", "{tmp}/d"],
        r"cannot read folder .*private \(Permission denied\)",
        unreadable("folder"),
        unprivileged=True,
    ),
    *[
        Case(
            f"prepare-tokenizer-sample-mb-{value}",
            ["prepare", "--quiet", "--source", "{corpus}", "--out", "{tmp}/d"]
            + ["--tokenizer-sample-mb", value],
            rf"--tokenizer-sample-mb must be a positive number of MiB, not {value}",
        )
        for value in ("nan", "inf", "0", "-1")
    ],
    Case("train-tokens-1e400", [*TRAIN, "--out", "{tmp}/r", "--tokens", "1e400"], r"too large"),
    Case(
        "plan-unique-tokens-1e400",
        ["plan", "--unique-tokens", "1e400", "--budget", "1e12"],
        r"'1e400' is too large a token count",
    ),
    Case(
        "plan-budget-1e400-tokens",
        ["plan", "--data", "{data}", "--budget", "1e400 tokens"],
        r"too large a token count",
    ),
    Case(
        "sweep-sizes-1e400",
        [*SWEEP_DRY_RUN, "--sizes", "1e400"],
        r"'1e400' is too large a parameter count",
    ),
    Case("fit-predict-at-1e400", ["fit", "{run}", "--predict-at", "1e400"], r"too large"),
    *[
        Case(
            f"plan-law-{what}",
            [*LAW_PLAN, "--law", "{tmp}/law.json"],
            rf"law.json holds a JSON {what}, not a law",
            files(**{"law.json": text}),
        )
        for what, text in (("list", "[1, 2]"), ("null", "null"))
    ],
    Case(
        "plan-law-is-a-folder",
        [*LAW_PLAN, "--rule", "fitted:{tmp}"],
        r"is a folder; give the law file `oneepoch scaling fit` wrote",
    ),
    Case(
        "plan-law-with-a-negative-a",
        [*LAW_PLAN, "--law", "{tmp}/law.json"],
        r"law.json holds A = -400, which no scaling law has",
        files(**{"law.json": law(A=-400)}),
    ),
    Case(
        "fit-plot-to-a-text-file",
        ["fit", "{run}", "--plot", "{tmp}/out.txt"],
        r"--plot .*out.txt: the image format is chosen by the file name's ending, and the "
        r"ending .txt names none; end it in .png, .pdf or .svg",
    ),
    Case(
        "fit-plot-over-the-runs-metrics",
        ["fit", "{run}", "--plot", "{run}/metrics.jsonl"],
        r"ending .jsonl names none",
    ),
    Case(
        "scaling-fit-plot-over-its-csv",
        [*SCALING_FIT, "--json", "{tmp}/law.json", "--plot", "{tmp}/s.csv"],
        r"ending .csv names none",
        files(**{"s.csv": SCALING_CSV}),
    ),
    Case(
        "sample-prompt-not-utf8",
        ["sample", "{run}", "--prompt", "caf\udce9"],
        r"--prompt is not valid UTF-8 text \(an undecodable byte at character 3\)",
    ),
    Case(
        "train-seed-too-large",
        [*NEW_RUN, "--seed", "100000000000000000000000"],
        r"train.seed \(the flag --seed or the --config file\) must be a whole number from 0 to "
        r"4294967295, not 100000000000000000000000",
    ),
    Case(
        "sample-seed-too-large",
        ["sample", "{run}", "--seed", "100000000000000000000000"],
        r"--seed must be a whole number from 0 to 4294967295",
    ),
    Case(
        "tensorboard-logdir-a-file",
        ["tensorboard", "{run}", "--logdir", "{records}"],
        r"is a file, so .*records.jsonl cannot be made|records.jsonl is a file",
    ),
    Case(
        "sweep-seq-len-zero",
        [*SWEEP_DRY_RUN, "--seq-len", "0"],
        r"--seq-len must be a finite number above 0, not 0",
    ),
    Case(
        "resume-after-config-toml-changed-the-model-shape",
        RESUME,
        r"checkpoint .*step_00000003 does not match the model its run's config.toml describes "
        r"\(d_model 64 in config.toml, 32 in the checkpoint\)",
        edit_config("d_model = 32", "d_model = 64"),
    ),
    Case(
        "sample-after-config-toml-changed-the-model-shape",
        ["sample", "{tmp}/run"],
        r"does not match the model its run's config.toml describes \(n_layer 2 in config",
        edit_config("n_layer = 1", "n_layer = 2"),
    ),
    Case(
        "sample-after-config-toml-changed-the-heads",
        ["sample", "{tmp}/run"],
        r"\(n_head 2 in config.toml, 1 in the checkpoint\)",
        edit_config("n_head = 1", "n_head = 2"),
    ),
    Case(
        "prepare-vocab-larger-than-memory",
        ["prepare", "--quiet", "--source", "{corpus}", "--out", "{tmp}/d"]
        + ["--vocab-size", "4000000000"],
        r"--vocab-size 4,000,000,000 needs about [\d,.]+ GB of memory to train the BPE",
        isolated=True,  # it aborted natively
    ),
    Case(
        "prepare-vocab-larger-than-uint32",
        ["prepare", "--quiet", "--source", "{corpus}", "--out", "{tmp}/d"]
        + ["--vocab-size", "5000000000"],
        r"more than the 4,294,967,296 token ids a dataset's shards can hold",
        isolated=True,
    ),
    # messages that misled
    Case(
        "prepare-jsonl-lines-holding-arrays",
        [*PREP, "--source", "{tmp}/arrays.jsonl", "--out", "{tmp}/d"],
        r"hold no text \(3 bad records; arrays.jsonl:1: a JSON list, not an object\)",
        files(**{"arrays.jsonl": '["a", "b"]\n[1]\n[]\n'}),
    ),
    Case(
        "prepare-max-doc-chars-zero",
        [*PREP, "--source", "{corpus}", "--out", "{tmp}/d", "--max-doc-chars", "0"],
        r"--max-doc-chars must be at least 1, not 0",
    ),
    Case(
        "train-config-whose-model-is-a-number",
        [*NEW_RUN, "--config", "{tmp}/c.toml"],
        r"c.toml: model is 3, not a table of settings; write them under a \[model\] header",
        files(**{"c.toml": "model = 3\n"}),
    ),
    Case(
        "train-config-a-folder",
        [*NEW_RUN, "--config", "{tmp}"],
        r"config file .* is a folder; give the path of a TOML file",
    ),
    Case(
        "resume-with-a-dataset-of-another-vocabulary",
        ["train", "--data", "{other_data}", "--out", "{tmp}/run", "--resume", "--quiet"],
        r"other-data has a vocabulary of 300 but the run in .*run was trained with 257; "
        r"resume with the dataset the run started on",
        lambda world, tmp: paused_run(world, tmp) and None,
    ),
    Case(
        "plan-budget-negative-time",
        ["plan", "--data", "{data}", "--budget", "-3min"],
        r"the budget must be positive, got '-3min'",
    ),
    Case(
        "fit-predict-at-negative",
        ["fit", "{run}", "--predict-at", "-5"],
        r"a --predict-at value cannot be negative \('-5'\)",
    ),
    Case(
        "train-steps-not-a-number",
        [*TRAIN, "--out", "{tmp}/r", "--steps", "many"],
        r"argument --steps: invalid int value: 'many'; see `oneepoch train --help`",
    ),
    Case(
        "prepare-hf-source-without-network",
        [*PREP, "--source", "hf:someone/corpus", "--out", "{tmp}/d"],
        r"cannot reach the Hugging Face Hub at http://127.0.0.1:9 \(Connection refused\)",
        env={"HF_ENDPOINT": "http://127.0.0.1:9"},  # a closed port: no traffic leaves
    ),
    Case(
        "prepare-from-a-fifo",
        [*PREP, "--source", "{tmp}/pipe.txt", "--out", "{tmp}/d"],
        r"pipe.txt is a FIFO, which would block until something writes to it",
        fifo("file"),
        isolated=True,  # it blocked
    ),
    Case(
        "prepare-over-a-folder-holding-a-fifo",
        [*PREP, "--source", "{tmp}/src", "--out", "{tmp}/d"],
        r"pipe.txt is a FIFO",
        fifo("folder"),
        isolated=True,
    ),
    # their siblings
    Case(
        "resume-with-metrics-jsonl-a-folder",
        RESUME,
        r"run/metrics.jsonl is a folder, where oneepoch keeps a file; move it out of the run",
        folder_in_run("metrics.jsonl"),
    ),
    Case(
        "resume-with-the-lock-file-a-folder",
        RESUME,
        r"run/.oneepoch.lock is a folder, where oneepoch keeps its lock file",
        folder_in_run(".oneepoch.lock"),
    ),
    Case(
        "prepare-seed-too-large",
        [*PREP, "--source", "{corpus}", "--out", "{tmp}/d", "--seed", "100000000000000000000"],
        r"--seed must be a whole number from 0 to 4294967295",
    ),
    Case(
        "prepare-workers-negative",
        [*PREP, "--source", "{corpus}", "--out", "{tmp}/d", "--workers", "-1"],
        r"--workers must be at least 1, not -1",
    ),
    Case(
        "scaling-fit-plot-and-json-the-same-file",
        [*SCALING_FIT, "--json", "{tmp}/law.png", "--plot", "{tmp}/law.png"],
        r"two outputs of this command name the same file",
        files(**{"s.csv": SCALING_CSV}),
    ),
    Case(
        "plan-eval-tokens-zero",
        [*LAW_PLAN, "--eval-tokens", "0"],
        r"--eval-tokens must be a finite number above 0, not 0",
    ),
]

CASES = [
    # analysis: outputs checked before the work, diverged runs named as such
    Case(
        "fit-plot-into-missing-folder",
        ["fit", "{run}", "--plot", "{tmp}/no/such/fit.png"],
        r"the folder of .*fit.png .* does not exist; create it first",
    ),
    Case(
        "scaling-json-into-missing-folder",
        ["scaling", "fit", "--csv", "{tmp}/s.csv", "--json", "{tmp}/no/law.json"],
        r"the folder of .*law.json .* does not exist",
        files(**{"s.csv": "params,tokens,loss\n1e6,1e7,3.0\n"}),
    ),
    Case(
        "fit-run-whose-validation-losses-are-all-nan",
        ["fit", "{tmp}/nanrun"],
        r"every validation loss in .* is NaN or missing \(2 evaluations\): the run diverged",
        files(**{"nanrun/metrics.jsonl": NAN_METRICS}),
    ),
    # prepare over a complete dataset: it must survive every failure
    Case(
        "rerun-mistyped-text-field",
        [*PREP, "--source", "{records}", "--out", "{data}", "--text-field", "txt"],
        r"no record in .*records.jsonl has a 'txt' field .*--text-field",
    ),
    Case(
        "rerun-empty-source",
        [*PREP, "--source", "{tmp}/empty.txt", "--out", "{data}"],
        r"hold no text",
        files(**{"empty.txt": ""}),
    ),
    Case(
        "rerun-with-bpe-on-blank-text",
        ["prepare", "--quiet", "--source", "{tmp}/blank.md", "--out", "{data}"],
        r"hold no text \(1 empty documents\)",
        files(**{"blank.md": " \n\n "}),
    ),
    Case(
        "rerun-one-document",
        [*PREP, "--source", "{tmp}/one.txt", "--out", "{data}"],
        r"only one distinct document",
        files(**{"one.txt": "just one"}),
    ),
    Case(
        "rerun-while-another-prepare-writes",
        [*PREP, "--source", "{corpus}", "--out", "{data}"],
        r"is in use by process \d+ \(oneepoch prepare, since .*\), so this prepare cannot",
        hold_lock_on_data,
    ),
    Case(
        "rerun-source-inside-out",
        [*PREP, "--source", "{tmp}/data/notes.md", "--out", "{tmp}/data"],
        r"inside --out",
        lambda world, tmp: (copy_data(world, tmp) / "notes.md").write_text("my notes") and None,
    ),
    Case(
        "rerun-missing-tokenizer-file",
        ["prepare", "--source", "{corpus}", "--out", "{data}", "--tokenizer", "{tmp}/t.json"],
        r"tokenizer file .* does not exist",
    ),
    Case("out-is-a-file", [*PREP, "--source", "{corpus}", "--out", "{records}"], r"is a file"),
    Case(
        "out-is-someone-elses-folder",
        [*PREP, "--source", "{corpus}", "--out", "{tmp}"],
        r"not empty and is not a oneepoch dataset",
        files(**{"thesis.tex": "precious"}),
    ),
    Case(
        "val-fraction-out-of-range",
        [*PREP, "--source", "{corpus}", "--out", "{tmp}/d", "--val-fraction", "2"],
        r"between 0 and 1",
    ),
    # data inspect
    Case("inspect-a-file", ["data", "inspect", "{records}"], r"is a file, not a dataset directory"),
    Case("inspect-missing", ["data", "inspect", "{tmp}/nothing"], r"does not exist"),
    Case("inspect-a-run", ["data", "inspect", "{run}"], r"not a prepared dataset"),
    Case(
        "inspect-non-numeric-vocab-size",
        ["data", "inspect", "{tmp}/data"],
        r"damaged \(tokenizer vocab_size is 'many', not a whole number\)",
        edit_manifest(lambda m: m["tokenizer"].update(vocab_size="many")),
    ),
    Case(
        "inspect-manifest-without-splits",
        ["data", "inspect", "{tmp}/data"],
        r"damaged \(no splits\)",
        edit_manifest(lambda m: m.pop("splits")),
    ),
    Case(
        "inspect-corrupted-shard",
        ["data", "inspect", "{tmp}/data", "--verify"],
        r"corrupted \(checksum differs\)",
        flip_shard_byte,
    ),
    # sample
    Case(
        "sample-with-another-tokenizer",
        ["sample", "{run}", "--data", "{other_data}"],
        r"another tokenizer than the one run .* was trained with",
    ),
    Case("sample-temperature-nan", ["sample", "{run}", "--temperature", "nan"], r"not a finite"),
    Case("sample-temperature-negative", ["sample", "{run}", "--temperature", "-1"], r"negative"),
    Case("sample-negative-length", ["sample", "{run}", "--max-new-tokens", "-5"], r"no text"),
    Case("sample-not-a-run", ["sample", "{data}"], r"not a run directory"),
    # train: refused up front, nothing created
    Case("train-lr-nan", [*NEW_RUN, "--lr", "nan"], r"optim.lr must be a finite number, got nan"),
    Case("train-lr-inf", [*NEW_RUN, "--lr", "inf"], r"optim.lr must be a finite number, got inf"),
    Case(
        "train-time-nan",
        [*TRAIN, "--out", "{tmp}/r", "--time", "nan"],
        r"train.time_s must be a finite number, got nan; .*--time",
    ),
    Case(
        "train-time-inf",
        [*TRAIN, "--out", "{tmp}/r", "--time", "inf"],
        r"train.time_s must be a finite number, got inf",
    ),
    Case(
        "train-dropout-nan",
        [*NEW_RUN, "--dropout", "nan"],
        r"model.dropout must be a finite number, got nan; .*--dropout",
    ),
    Case(
        "train-model-too-large-for-memory",
        [*NEW_RUN, "--n-layer", "1000", "--d-model", "65536"],
        r"a model of 5.\d+e\+13 parameters .* needs at least [\d,.]+ TB .* more than the "
        r"[\d,.]+ [GT]B free .*; at most about \d.* parameters fit here .*lower --n-layer or "
        r"--d-model",
    ),
    Case(
        "train-out-is-a-file",
        [*TRAIN, "--out", "{records}", "--steps", "5"],
        r"--out .*records.jsonl is a file, not a run directory",
    ),
    Case(
        "train-out-inside-a-file",
        [*TRAIN, "--out", "{records}/run", "--steps", "5"],
        r"cannot create the run directory .*records.jsonl/run \(Not a directory\)",
    ),
    # train on the complete run
    Case(
        "train-over-a-run-without-resume",
        [*TRAIN, "--out", "{run}", "--steps", "5"],
        r"already holds a run; resume it",
    ),
    Case(
        "resume-while-another-trainer-holds-the-run",
        [*TRAIN, "--out", "{run}", "--resume"],
        r"is in use by process \d+ \(oneepoch train, since .*\), so this train cannot",
        hold_lock_on_run,
    ),
    Case(
        "resume-on-a-changed-dataset",
        ["train", "--data", "{tmp}/d2", "--out", "{tmp}/run", "--resume", *TINY_RUN],
        r"d2 holds other tokens than the dataset run .*run started on \(its fingerprint "
        r"differs: it was prepared again from other text or settings\); resume with the "
        r"original dataset, or start a new run with another --out\.",
        other_text_same_tokenizer,
    ),
    Case(
        "resume-with-every-checkpoint-damaged",
        ["train", "--data", "{data}", "--out", "{tmp}/run", "--resume", *TINY_RUN],
        r"every checkpoint of .*run is damaged \(step_00000003 \(the checksum of "
        r"model.safetensors differs.*\), so the run cannot be resumed",
        damage_every_checkpoint,
    ),
    # plan
    Case("plan-budget-inf", ["plan", "--data", "{data}", "--budget", "inf"], r"finite amount"),
    Case("plan-budget-nan", ["plan", "--data", "{data}", "--budget", "nan"], r"finite amount"),
    *ISSUE_23,
]


def run_in_process(args: list[str]) -> SimpleNamespace:
    """What `python -m oneepoch ARGS` prints and returns, run in this process: stdout,
    stderr (warnings shown there, as the interpreter would) and the exit status; an
    exception that escapes is printed as the traceback a user would see."""
    from oneepoch.cli import main

    out, err = io.StringIO(), io.StringIO()
    gc.collect()  # garbage of earlier cases warns now, not inside this case's stderr

    def show(message, category, filename, lineno, file=None, line=None):
        err.write(warnings.formatwarning(message, category, filename, lineno, line))

    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = show
            try:
                code = main(args)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:  # noqa: BLE001 - shown as a user would see it
                err.write(traceback.format_exc())
                code = 1
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def run_isolated(args: list[str], case: Case) -> SimpleNamespace:
    prefix = [sys.executable, "-m", "oneepoch"]
    if case.unprivileged and os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: file permissions do not apply")
        prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *prefix]
    try:
        return subprocess.run(
            [*prefix, *args],
            capture_output=True,
            text=True,
            timeout=30,
            env=cli_env(**(case.env or {})),
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{case.name}: no answer within 30 s (it blocks)")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_case(world, tmp_path, case):
    outside = outside_of(tmp_path)
    (outside / "folder").mkdir(parents=True)
    (outside / "sentinel.txt").write_text("someone else's file, " * 200)
    (outside / "folder" / "notes.txt").write_text("and their folder")
    before = {p: tree_digest(p) for p in (world.data, world.run, world.paused, world.same_vocab)}
    after = case.setup(world, tmp_path) if case.setup else None
    before[tmp_path] = tree_digest(tmp_path)
    before[outside] = tree_digest(outside)
    args = [world.fill(a, tmp_path) for a in case.args]
    try:
        isolated = case.isolated or case.env or case.unprivileged
        res = run_isolated(args, case) if isolated else run_in_process(args)
    finally:
        if after:
            after()
    output = res.stdout + res.stderr
    assert res.returncode != 0, output
    assert "Traceback" not in output, output
    err = res.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert re.search(case.message, err), err
    for path, digest in before.items():
        assert tree_digest(path) == digest, f"{path} changed"
    leftovers = [p.name for p in world.root.iterdir() if p.name.startswith(".")]
    assert leftovers == [], leftovers


def test_inspect_into_a_closed_pipe(world):
    """`oneepoch data inspect DIR | head -1`: the reader went away; stop quietly."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "oneepoch", "data", "inspect", str(world.data)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
    )
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and err == "", err


def _unshare_works() -> bool:
    try:
        res = subprocess.run(
            ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k none /mnt"],
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return res.returncode == 0


DISK_FULL = """
set -e
mount -t tmpfs -o size=320k none "$DISK"
"$PY" -m oneepoch prepare --quiet --tokenizer bytes --source "$SMALL" --out "$DISK/d" > /dev/null
"$PY" -c "$DIGEST" "$DISK/d" > "$OUTDIR/before.json"
set +e
"$PY" -m oneepoch prepare --quiet --tokenizer bytes --source "$BIG" --out "$DISK/d" \
    > "$OUTDIR/out.txt" 2> "$OUTDIR/err.txt"
echo $? > "$OUTDIR/rc.txt"
"$PY" -c "$DIGEST" "$DISK/d" > "$OUTDIR/after.json"
ls -a "$DISK" > "$OUTDIR/disk.txt"
"""

DIGEST = """
import hashlib, json, pathlib, sys
root = pathlib.Path(sys.argv[1])
print(json.dumps({str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                  for p in sorted(root.rglob("*")) if p.is_file()}))
"""


@pytest.mark.skipif(not _unshare_works(), reason="cannot mount a small tmpfs (unshare -rm)")
def test_disk_full_during_prepare_keeps_the_old_dataset(tmp_path):
    """A real full disk: a 320 KiB tmpfs holding a small dataset, then a rerun that needs
    more room than is left."""
    small = make_corpus(tmp_path / "small", n=20)  # ~4 KB of text
    big = make_corpus(tmp_path / "big", n=1500)  # ~400 KB of tokens
    (tmp_path / "disk").mkdir()
    env = cli_env(
        PY=sys.executable,
        DISK=str(tmp_path / "disk"),
        SMALL=str(small),
        BIG=str(big),
        OUTDIR=str(tmp_path),
        DIGEST=DIGEST,
    )
    res = subprocess.run(
        ["unshare", "-rm", "sh", "-c", DISK_FULL], env=env, capture_output=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    rc = int((tmp_path / "rc.txt").read_text())
    err = (tmp_path / "err.txt").read_text().strip()
    assert rc == 2 and "Traceback" not in err and "\n" not in err, err
    assert err.startswith("error: the disk is full") and "is unchanged" in err, err
    before = json.loads((tmp_path / "before.json").read_text())
    assert before and json.loads((tmp_path / "after.json").read_text()) == before
    assert (tmp_path / "disk.txt").read_text().split() == [".", "..", "d"]  # nothing beside


def test_file_size_limit_during_prepare_keeps_the_old_dataset(world, tmp_path):
    """RLIMIT_FSIZE: the kernel refuses a write past the limit (EFBIG), a real write error
    on a real write path."""
    import resource

    data = copy_data(world, tmp_path)
    before = tree_digest(data)
    big = make_corpus(tmp_path / "big", n=1000)

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    res = subprocess.run(
        [sys.executable, "-m", "oneepoch", *PREP, "--source", str(big), "--out", str(data)],
        capture_output=True,
        text=True,
        env=cli_env(),
        preexec_fn=limit,
        timeout=120,
    )
    err = res.stderr.strip()
    assert res.returncode == 2 and "Traceback" not in err and "\n" not in err, err
    assert "file-size limit (ulimit -f)" in err and "is unchanged" in err, err
    assert tree_digest(data) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big", "data"]


def test_sample_from_the_run_still_works(world):
    res = run_cli("sample", str(world.run), "--max-new-tokens", "30", "--prompt", "The")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("The") and "<|endoftext|>" not in res.stdout


def test_resume_of_a_completed_run_changes_nothing(world):
    before = tree_digest(world.run)
    res = run_cli(
        "train", "--data", str(world.data), "--out", str(world.run), "--resume", *TINY_RUN
    )
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert re.fullmatch(
        r".*run is complete \(5 steps, val_loss \d+\.\d+\); there is nothing to resume, and "
        r"nothing was changed\.",
        res.stderr.strip(),
    ), res.stderr
    assert tree_digest(world.run) == before


def test_a_garbage_latest_file_is_ignored(world, tmp_path):
    """LATEST holding binary garbage (or a path outside): the newest complete checkpoint."""
    from oneepoch import checkpoint

    run = tmp_path / "run"
    shutil.copytree(world.run, run)
    newest = checkpoint.latest(run / "checkpoints")
    for garbage in (b"\xff\xfe\x00\x01garbage\x00", b"../../etc", b""):
        (run / "checkpoints" / "LATEST").write_bytes(garbage)
        assert checkpoint.latest(run / "checkpoints") == newest
    res = run_cli("sample", str(run), "--max-new-tokens", "5")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr


DISK_FULL_CHECKPOINT = """
set -e
mount -t tmpfs -o size=$SIZE none "$DISK"
set +e
"$PY" -m oneepoch train --data "$DATA" --out "$DISK/run" $ARGS > "$OUTDIR/out.txt" \
    2> "$OUTDIR/err.txt"
echo $? > "$OUTDIR/rc.txt"
ls -a "$DISK/run/checkpoints" > "$OUTDIR/ckpts.txt"
"$PY" -c "$VERIFY" "$DISK/run/checkpoints" > "$OUTDIR/verified.txt" 2>&1
mount -o remount,size=8m "$DISK"
"$PY" -m oneepoch train --data "$DATA" --out "$DISK/run" $ARGS --resume > /dev/null \
    2> "$OUTDIR/err2.txt"
echo $? > "$OUTDIR/rc2.txt"
cp "$DISK/run/run.json" "$OUTDIR/run.json"
"""

VERIFY = """
import sys
from pathlib import Path
from oneepoch import checkpoint
last = checkpoint.latest(Path(sys.argv[1]))
checkpoint.verify(last)
print(last.name)
"""


@pytest.mark.skipif(not _unshare_works(), reason="cannot mount a small tmpfs (unshare -rm)")
def test_disk_full_during_a_checkpoint_keeps_the_previous_one(world, tmp_path):
    """A real full disk: a tmpfs with room for the run and one checkpoint, not two."""
    (tmp_path / "disk").mkdir()
    args = [*TINY_RUN[:-3], "--steps", "20", "--checkpoint-every", "5", "--quiet"]
    env = cli_env(
        PY=sys.executable,
        DISK=str(tmp_path / "disk"),
        DATA=str(world.data),
        ARGS=" ".join(args),
        SIZE="400k",
        OUTDIR=str(tmp_path),
        VERIFY=VERIFY,
    )
    res = subprocess.run(
        ["unshare", "-rm", "sh", "-c", DISK_FULL_CHECKPOINT],
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    rc = int((tmp_path / "rc.txt").read_text())
    err = (tmp_path / "err.txt").read_text().strip()
    assert rc == 2 and "Traceback" not in err and "\n" not in err, err
    assert re.fullmatch(
        r"error: the disk is full \(no space left on the device holding .*run\), so training "
        r"stopped; the previous checkpoint, .*step_00000005, is intact: free some space, then "
        r"continue with `oneepoch train --data .* --out .*run --resume`\.",
        err,
    ), err
    assert (tmp_path / "ckpts.txt").read_text().split() == [".", "..", "LATEST", "step_00000005"]
    assert (tmp_path / "verified.txt").read_text().strip() == "step_00000005"
    assert int((tmp_path / "rc2.txt").read_text()) == 0, (tmp_path / "err2.txt").read_text()
    info = json.loads((tmp_path / "run.json").read_text())
    assert (info["status"], info["final"]["step"]) == ("completed", 20)


def test_sample_past_the_end_of_text(world):
    res = run_cli("sample", str(world.run), "--max-new-tokens", "40", "--past-eot", "--seed", "1")
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    help_text = run_cli("sample", "--help").stdout
    assert "--past-eot" in help_text and "end-of-text" in help_text


def test_resume_cuts_a_metrics_file_cut_mid_line_back_to_its_last_complete_line(world, tmp_path):
    """metrics.jsonl cut short mid-line after the checkpoint was written (a copy that did not
    finish, say): resuming cuts it back to its last complete line and says what was lost,
    instead of padding it with NUL bytes up to the checkpoint's offset and gluing the next
    line on."""
    from oneepoch.analysis.runs import load_run

    run = paused_run(world, tmp_path)
    metrics = run / "metrics.jsonl"
    raw = metrics.read_bytes()
    last_start = raw.rstrip(b"\n").rfind(b"\n") + 1
    metrics.write_bytes(raw[: last_start + 10])  # the step 3 line, cut after 10 bytes
    res = run_in_process(
        ["train", "--data", str(world.data), "--out", str(run), "--resume", "--quiet"]
    )
    assert res.returncode == 0, res.stderr
    assert re.fullmatch(
        r"note: .*metrics.jsonl no longer reaches the [\d,]+ bytes its checkpoint recorded "
        r"\(it holds [\d,]+, cut short or edited since\), so it is cut back to its last "
        r"complete line, step 2; the lines between that and the checkpoint are lost, and "
        r"training continues from the checkpoint\.",
        res.stderr.strip(),
    ), res.stderr
    text = metrics.read_bytes()
    assert b"\0" not in text and text.endswith(b"\n")
    steps = [json.loads(line)["step"] for line in text.splitlines()]
    assert steps == sorted(set(steps)) and steps[:2] == [1, 2] and 3 not in steps
    assert steps[-1] == 5
    assert load_run(run).evals["step"][-1] == 5  # what fit reads


def test_fit_says_how_many_evaluations_it_left_out(tmp_path):
    from oneepoch.analysis.synthetic import power_law, write_run

    run = write_run(tmp_path / "run", power_law(2.0, 30.0, 0.3), total_steps=400, eval_every=40)
    with open(run / "metrics.jsonl", "a") as f:  # two evaluations past the end, both unusable
        f.write('{"step": 401, "tokens": 3285000, "val_loss": null}\n')
        f.write('{"step": 402, "tokens": 3293000, "val_loss": -2.5}\n')
    res = run_in_process(["fit", str(run), "--bootstrap", "0", "--forms", "power"])
    assert res.returncode == 0, res.stderr
    assert res.stderr == (
        f"note: 2 evaluations of {run} are left out: their val_loss is NaN, missing, infinite, "
        "zero or negative, which no cross-entropy is.\n"
    )


def test_a_checkpoint_link_is_replaced_not_followed(tmp_path):
    """checkpoint.save where a link stands under a checkpoint's name (the step it writes,
    or one it prunes): the link goes, never what it points to; a checkpoints folder that is
    itself a link is refused."""
    import torch

    from oneepoch import checkpoint
    from oneepoch.safefs import LinkRefused

    state = ({"w": torch.ones(4)}, {"step": 1})
    elsewhere = tmp_path / "elsewhere"
    for step in (2, 3):
        (elsewhere / f"step_{step:08d}").mkdir(parents=True)
        (elsewhere / f"step_{step:08d}" / "theirs.txt").write_text("keep me")
    before = tree_digest(elsewhere)
    root = tmp_path / "run" / "checkpoints"
    checkpoint.save(root, 1, *state)
    for step in (2, 3):
        (root / f"step_{step:08d}").symlink_to(elsewhere / f"step_{step:08d}")
    checkpoint.save(root, 3, *state, keep=1)  # writes over the link step 3, prunes 1 and 2
    assert sorted(p.name for p in root.iterdir()) == ["LATEST", "step_00000003"]
    assert not (root / "step_00000003").is_symlink()
    assert tree_digest(elsewhere) == before
    (tmp_path / "run2").mkdir()
    (tmp_path / "run2" / "checkpoints").symlink_to(elsewhere)
    with pytest.raises(LinkRefused):
        checkpoint.save(tmp_path / "run2" / "checkpoints", 4, *state)
    assert tree_digest(elsewhere) == before
