"""Atomic file writes (torch-free): a file appears under its name only when complete."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from oneepoch.safefs import open_file


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary sibling, fsync it and rename it over ``path``.

    The rename replaces whatever has the name, a link too, without following it; the
    temporary file is created anew (a leftover or a link under its name is removed first).
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        with open_file(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk, say: leave nothing half-written beside
        raise
