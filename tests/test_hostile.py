"""Hostile use through the real command line: each case must end in one sentence naming the
problem, a non-zero exit, no traceback, and leave what was complete before byte-for-byte as
it was.

To add a case, append a ``Case`` to ``CASES``: the command's arguments (``{data}``, ``{run}``,
``{other_data}``, ``{corpus}``, ``{records}``, ``{tmp}`` are filled in; ``{tmp}`` is the
case's own folder), a regular expression its error must match, and optionally a ``setup``
called with the ``World`` and the case's folder before the command runs, which may return a
function to call after it (to stop a helper process, say). ``World`` holds a complete
dataset (``data``, bytes tokenizer) and a complete tiny run trained on it (``run``); both,
and the case's folder as the setup left it, are checked unchanged afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pytest

from helpers import cli_env, make_corpus, run_cli
from oneepoch.data.prepare import prepare

TINY_RUN = ["--n-layer", "1", "--n-head", "1", "--d-model", "32", "--seq-len", "32"]
TINY_RUN += ["--eval-tokens", "1024", "--steps", "5", "--quiet"]


@dataclass
class World:
    root: Path
    corpus: Path  # 200 small text files
    data: Path  # a complete dataset of them (bytes tokenizer)
    run: Path  # a complete 5-step run trained on `data`
    other_data: Path  # the same text with a BPE tokenizer
    records: Path  # a JSONL file whose records hold their text under "text"

    def fill(self, arg: str, tmp: Path) -> str:
        return arg.format(
            data=self.data,
            run=self.run,
            other_data=self.other_data,
            corpus=self.corpus,
            records=self.records,
            tmp=tmp,
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("hostile")
    corpus = make_corpus(root / "corpus", n=200)
    data, other = root / "data", root / "other-data"
    prepare([str(corpus)], data, tokenizer="bytes")
    prepare([str(corpus)], other, vocab_size=300)
    records = root / "records.jsonl"
    records.write_text(
        "".join(json.dumps({"text": f"record {i}", "id": i}) + "\n" for i in range(9))
    )
    run = root / "run"
    res = run_cli("train", "--data", str(data), "--out", str(run), *TINY_RUN)
    assert res.returncode == 0, res.stderr
    return World(root, corpus, data, run, other, records)


def tree_digest(root: Path) -> dict[str, str]:
    """Every file and folder under ``root``, with a hash of each file's bytes."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "link:" + os.readlink(path)
        elif path.is_dir():
            out[rel] = "dir"
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
    run = tmp / "run"
    res = run_cli(
        "train", "--data", str(world.data), "--out", str(run), *TINY_RUN, "--until-step", "3"
    )
    assert res.returncode == 0, res.stderr
    return run


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


class Case(NamedTuple):
    name: str
    args: list[str]
    message: str  # a regular expression the error must match
    setup: Callable | None = None


PREP = ["prepare", "--quiet", "--tokenizer", "bytes"]
TRAIN = ["train", "--data", "{data}", "--quiet"]
NEW_RUN = [*TRAIN, "--out", "{tmp}/r", "--steps", "5"]

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
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_case(world, tmp_path, case):
    before = {p: tree_digest(p) for p in (world.data, world.run)}
    after = case.setup(world, tmp_path) if case.setup else None
    before[tmp_path] = tree_digest(tmp_path)
    try:
        res = run_cli(*(world.fill(a, tmp_path) for a in case.args), timeout=120)
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
