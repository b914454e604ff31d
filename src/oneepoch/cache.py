"""The per-user cache of measurements (torch-free): peak FLOP/s, dtype choices, step
timings, built-in corpus sources. ``$ONEEPOCH_CACHE`` moves it from ~/.cache/oneepoch."""

from __future__ import annotations

import json
import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("ONEEPOCH_CACHE") or Path.home() / ".cache" / "oneepoch")


def read_entries(path: Path) -> dict:
    """The JSON object stored at ``path``; empty when missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def store_entry(path: Path, key: str, entry: dict) -> None:
    """Add ``key: entry`` to the JSON object at ``path`` (re-read first: another process may
    have added entries meanwhile), written whole under a temporary name and renamed."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**read_entries(path), key: entry}, indent=1))
        tmp.replace(path)
    except OSError:
        pass  # a read-only home only costs a re-measurement next time
