"""One writer per directory: an advisory lock that a killed process cannot leave stuck.

``with hold(run_dir, "train"):`` takes an exclusive ``flock`` on ``run_dir/.oneepoch.lock``
and records the holder's PID, command and start time in it. A second writer is refused at
once with a :class:`UserError` naming that PID. The kernel drops a ``flock`` when its
process dies, however it dies, so a lock file left by a killed process (it still names the
dead PID) never blocks the next run. The holder removes the file when it is done, so a
directory that was locked and released is byte-for-byte as it was.

Torch-free and small on purpose: the dataset writer (``prepare``) and the trainer both use it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from oneepoch.errors import UserError
from oneepoch.safefs import LinkRefused, open_nofollow

LOCK_NAME = ".oneepoch.lock"


def lock_path(directory: str | Path) -> Path:
    return Path(directory) / LOCK_NAME


def read_holder(directory: str | Path) -> dict:
    """What the lock file says about its (last) holder: pid, what, started; {} if nothing."""
    try:
        fd = open_nofollow(lock_path(directory), os.O_RDONLY)
    except (OSError, LinkRefused):
        return {}
    try:
        data = json.loads(os.read(fd, 4096))
    except (OSError, ValueError):
        return {}
    finally:
        os.close(fd)
    return data if isinstance(data, dict) else {}


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _refusal(directory: Path, fd: int, what: str) -> UserError:
    holder: dict = {}
    for _ in range(20):  # the holder writes its PID just after it takes the lock
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            holder = json.loads(os.read(fd, 4096) or b"{}")
        except ValueError:
            holder = {}
        if isinstance(holder, dict) and holder.get("pid"):
            break
        time.sleep(0.01)
    if not isinstance(holder, dict):
        holder = {}
    who = f"process {holder['pid']}" if holder.get("pid") else "another process"
    doing = f" (oneepoch {holder['what']}, since {holder['started']})" if holder.get("what") else ""
    return UserError(
        f"{directory} is in use by {who}{doing}, so this {what} cannot write to it; wait for "
        "that process to finish or stop it, then try again."
    )


@contextlib.contextmanager
def hold(directory: str | Path, what: str) -> Iterator[Path]:
    """Hold ``directory`` for writing while the block runs; yields the lock file's path.

    ``directory`` must exist. Raises UserError at once (no waiting) when another process
    holds it. Not re-entrant: a second ``hold`` on the same directory, even from this
    process, is refused too.
    """
    directory = Path(directory)
    path = lock_path(directory)
    while True:
        try:
            # Not through a link: a lock file planted as a link to a file elsewhere would
            # have that file overwritten with our PID and then deleted.
            fd = open_nofollow(path, os.O_RDWR | os.O_CREAT)
        except FileNotFoundError:
            raise UserError(f"{directory} does not exist; cannot lock it for {what}.") from None
        except PermissionError:
            raise UserError(
                f"cannot create {path} (permission denied); {what} needs a directory it may "
                "write to."
            ) from None
        except IsADirectoryError:
            raise UserError(
                f"{path} is a folder, where oneepoch keeps its lock file; move it out of "
                f"{directory}, then try again."
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            refusal = _refusal(directory, fd, what)
            os.close(fd)
            raise refusal from None
        # The previous holder may have removed the file between our open and our flock:
        # then we hold a lock on a file nobody else will open; start again on the new one.
        if _same_file(fd, path):
            break
        os.close(fd)
    try:
        info = {"pid": os.getpid(), "what": what, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode() + b"\n", 0)
        yield path
    finally:
        try:
            if _same_file(fd, path):
                os.unlink(path)  # while still locked: a waiter then retries on a new file
        except OSError:
            pass  # left behind it blocks nobody: the flock goes with our descriptor
        os.close(fd)
