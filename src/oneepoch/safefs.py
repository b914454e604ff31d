"""Writing only inside the folders a command is given (torch-free).

Run and dataset folders travel between people (a colleague's run, a job directory copied
from a cluster), so what they hold is data, links included. A symbolic link planted under
a name oneepoch writes (``metrics.jsonl``, ``.oneepoch.lock``, ``checkpoints/``) would
make it write, truncate or delete the file the link points to, anywhere. So every file
oneepoch writes, appends to, truncates or deletes inside such a folder goes through here:

- ``open_nofollow`` / ``open_file`` open without following a link at the last component
  (``O_NOFOLLOW``): a link there is refused in one sentence (``LinkRefused``);
- ``refuse_links`` checks the folders a write goes through (``checkpoints/``), which
  ``O_NOFOLLOW`` does not cover;
- ``remove_tree`` deletes a folder oneepoch made, or only the link standing in its place;
- ``inside`` joins a name read from a file (a manifest's shard or tokenizer) onto its
  folder only when it is a plain file name, so it cannot climb out.

The folder a user names on the command line may itself be a link: that one is theirs.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import BinaryIO

from oneepoch.errors import UserError

_MODES = {
    "rb": os.O_RDONLY,
    "wb": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "xb": os.O_WRONLY | os.O_CREAT | os.O_EXCL,
    "ab": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
    "r+b": os.O_RDWR,
}


class LinkRefused(UserError):
    """A path oneepoch would write through is a symbolic link."""

    def __init__(self, path: str | Path):
        super().__init__(
            f"{path} is a symbolic link, and oneepoch does not write through links inside the "
            "folders it is given (that would change whatever the link points to); replace it "
            "with the file or folder itself, or remove it, then try again."
        )
        self.path = Path(path)


def refuse_links(*paths: str | Path) -> None:
    """Raise LinkRefused for the first of ``paths`` that is a symbolic link."""
    for path in paths:
        if os.path.islink(path):
            raise LinkRefused(path)


def open_nofollow(path: str | Path, flags: int, mode: int = 0o644) -> int:
    """``os.open`` that refuses a symbolic link at ``path`` instead of following it."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        # ELOOP: the link O_NOFOLLOW refused; EEXIST from O_EXCL on a (dangling) link
        if exc.errno == errno.ELOOP or (exc.errno == errno.EEXIST and os.path.islink(path)):
            raise LinkRefused(path) from None
        raise


def open_file(path: str | Path, mode: str) -> BinaryIO:
    """A binary file object (``mode`` rb, wb, xb, ab or r+b), opened without following a
    link at ``path``."""
    return os.fdopen(open_nofollow(path, _MODES[mode]), mode.replace("x", "w"))


def remove_tree(path: str | Path, ignore_errors: bool = False) -> None:
    """Delete a folder oneepoch made; a link in its place is removed, never followed."""
    try:
        if os.path.islink(path):
            os.unlink(path)
        elif os.path.exists(path):
            shutil.rmtree(path)
    except OSError:
        if not ignore_errors:
            raise


def is_plain_name(name) -> bool:
    """A file name with no folder part: not empty, not ``.`` or ``..``, no separator."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "/" not in name
        and os.sep not in name
        and "\0" not in name
    )


def inside(folder: str | Path, name, what: str) -> Path:
    """``folder / name`` for a ``name`` read from a file in ``folder``; refused unless it is
    a plain file name, so that it stays in ``folder``."""
    if not is_plain_name(name):
        raise UserError(
            f"{folder} names its {what} {name!r}, which is not a file name inside that folder; "
            "the folder is damaged or was edited: prepare or copy it again."
        )
    return Path(folder) / name
