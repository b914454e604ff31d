"""Helpers shared by the tests: small real-text datasets, running the CLI as a user does."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np

SRC = Path(__file__).resolve().parents[1] / "src"


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


def run_cli(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run `python -m oneepoch ARGS` in a fresh process (as a user would)."""
    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "oneepoch", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        **kwargs,
    )


WORDS = "the quick brown fox jumps over a lazy dog while seven wise owls sing softly".split()


def make_corpus(folder, n=40, seed=0):
    """``n`` distinct small text files of English-like words."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        words = rng.choice(WORDS, size=int(rng.integers(20, 60)))
        (folder / f"doc{i:03d}.txt").write_text(f"Document {i}. " + " ".join(words) + ".\n")
    return folder
