"""Writing a run directory: config.toml, metrics.jsonl, run.json (see docs/formats.md)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from oneepoch.atomic import write_atomic


class MetricsLog:
    """Appends one JSON object per line and flushes it, so a kill loses at most one line."""

    def __init__(self, path: Path, truncate_to: int | None = None):
        self.path = path
        if truncate_to is not None and path.exists():
            # Resuming: drop lines written after the checkpoint; they are recomputed identically.
            with open(path, "r+b") as f:
                f.truncate(truncate_to)
        self._file = open(path, "ab")

    def write(self, record: dict) -> None:
        clean = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in record.items()
        }
        self._file.write((json.dumps(clean) + "\n").encode())
        self._file.flush()

    def offset(self) -> int:
        self._file.flush()
        return self._file.tell()

    def sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def write_json(path: Path, data: dict) -> None:
    write_atomic(path, (json.dumps(data, indent=2) + "\n").encode())


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def read_status(run_dir: Path) -> tuple[str, int]:
    """(status, step) of a run directory, from its run.json: "completed", "paused",
    "interrupted", "failed" or "running" with the last step it recorded (-1 when its
    run.json says nothing of it yet, as while a session trains), or ("new", 0) where no run
    has started."""
    try:
        info = read_json(run_dir / "run.json")
    except (OSError, ValueError):
        return ("new", 0) if not (run_dir / "config.toml").exists() else ("running", -1)
    if not isinstance(info, dict):
        return "running", -1
    step = (info.get("final") or {}).get("step")
    return str(info.get("status", "running")), step if isinstance(step, int) else -1
