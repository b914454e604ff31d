"""Atomic, checksummed checkpoints: a checkpoint directory exists under its final name only
when complete, and says what its files' bytes must hash to.

Layout: ``checkpoints/step_00001234/{model.safetensors, state.pt, checksums.json}`` and a
``LATEST`` file naming the newest. Each is written under a temporary name, fsynced and
renamed, so a kill at any moment leaves the previous checkpoint intact and loadable.
``checksums.json`` holds the sha256 of the other two files; ``load`` verifies it, so a
checkpoint damaged on disk afterwards is reported instead of loaded (checkpoints written
before checksums existed have none and are loaded as they are).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from oneepoch.atomic import fsync_dir, write_atomic
from oneepoch.errors import UserError
from oneepoch.safefs import refuse_links, remove_tree

FILES = ("model.safetensors", "state.pt")
CHECKSUMS = "checksums.json"
_NAME = re.compile(r"step_\d{8}")


class Damaged(UserError):
    """A checkpoint whose files are not what was written (checksum differs, unreadable)."""

    def __init__(self, ckpt_dir: Path, reason: str):
        super().__init__(
            f"checkpoint {ckpt_dir} is damaged ({reason}); delete it to fall back to an "
            "older one, or start the run again with another --out."
        )
        self.ckpt_dir, self.reason = ckpt_dir, reason


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def save(ckpt_root: Path, step: int, model_state: dict, train_state: dict, keep: int = 2) -> Path:
    """Write a checkpoint for ``step``; returns its directory.

    On any failure the partial checkpoint is removed and the previous ones are untouched;
    the error propagates, a full disk as an OSError with errno ENOSPC (the Rust and C++
    writers underneath report it otherwise).
    """
    refuse_links(ckpt_root)  # writing and pruning stay inside the run's own folder
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step_{step:08d}"
    tmp = ckpt_root / f".tmp_step_{step:08d}"
    remove_tree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        tensors = {k: v.detach().cpu().contiguous() for k, v in model_state.items()}
        save_file(tensors, tmp / "model.safetensors")
        with open(tmp / "state.pt", "wb") as fh:  # a Python file: errors come with errno
            torch.save(train_state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        with open(tmp / "model.safetensors", "rb") as fh:
            os.fsync(fh.fileno())
        sums = {name: file_sha256(tmp / name) for name in FILES}
        write_atomic(tmp / CHECKSUMS, (json.dumps({"sha256": sums}, indent=2) + "\n").encode())
        fsync_dir(tmp)
    except BaseException as exc:
        full = not isinstance(exc, (OSError, KeyboardInterrupt)) and _disk_full(exc, ckpt_root)
        remove_tree(tmp, ignore_errors=True)
        if full:
            raise OSError(
                errno.ENOSPC, f"no space left on the device while writing {tmp}"
            ) from None
        raise
    remove_tree(final)  # a link named so goes, not what it points to
    os.replace(tmp, final)
    fsync_dir(ckpt_root)
    write_atomic(ckpt_root / "LATEST", final.name.encode())
    # Keep the newest `keep` up to this step. Any later one belongs to a continuation that
    # was abandoned (a resume fell back past a damaged checkpoint): this run recomputes it.
    mine = [d for d in sorted(ckpt_root.glob("step_*")) if d.name <= final.name]
    later = [d for d in sorted(ckpt_root.glob("step_*")) if d.name > final.name]
    for old in (mine[:-keep] if keep > 0 else []) + later:
        remove_tree(old, ignore_errors=True)
    return final


def _disk_full(exc: BaseException | None, folder: Path) -> bool:
    """Whether an error from safetensors (Rust) or torch (C++) was a full disk: torch's zip
    writer, say, masks the OSError with a RuntimeError of its own as it closes."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(exc)
        if any(s in text for s in ("os error 28", "No space left", "StorageFull", "os error 122")):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    try:
        return shutil.disk_usage(folder).free < (1 << 16)
    except OSError:
        return False


def _complete(d: Path) -> bool:
    return all((d / name).is_file() for name in FILES)


def _pointer(ckpt_root: Path) -> str | None:
    """The name LATEST holds, if it is a checkpoint's name (it may be damaged or garbage)."""
    try:
        text = (ckpt_root / "LATEST").read_bytes()[:64].decode("ascii", errors="replace").strip()
    except OSError:
        return None
    return text if _NAME.fullmatch(text) else None


def candidates(ckpt_root: Path) -> list[Path]:
    """Complete checkpoint directories, newest first (the one LATEST names leads)."""
    complete = [d for d in sorted(ckpt_root.glob("step_*"), reverse=True) if _complete(d)]
    named = _pointer(ckpt_root)
    lead = [d for d in complete if d.name == named]
    return lead + [d for d in complete if d.name != named]


def latest(ckpt_root: Path) -> Path | None:
    """The newest complete checkpoint, or None (not verified: ``load`` does that)."""
    found = candidates(ckpt_root)
    return found[0] if found else None


def verify(ckpt_dir: Path) -> None:
    """Raise Damaged unless every file hashes to what checksums.json says (when it exists)."""
    path = ckpt_dir / CHECKSUMS
    if not path.exists():
        return  # written before checksums existed
    try:
        sums = json.loads(path.read_text())["sha256"]
        if not isinstance(sums, dict):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        raise Damaged(ckpt_dir, f"{CHECKSUMS} is unreadable") from None
    for name in FILES:
        try:
            ok = sums.get(name) == file_sha256(ckpt_dir / name)
        except OSError as exc:
            raise Damaged(ckpt_dir, f"{name} cannot be read: {exc.strerror}") from None
        if not ok:
            raise Damaged(ckpt_dir, f"the checksum of {name} differs from the one written")


def load(ckpt_dir: Path) -> tuple[dict, dict]:
    """(model state dict, training state) from a checkpoint directory, verified first."""
    verify(ckpt_dir)
    try:
        model_state = load_file(ckpt_dir / "model.safetensors")
        train_state = torch.load(ckpt_dir / "state.pt", map_location="cpu", weights_only=False)
    except Exception as exc:  # a damaged file: say which, not a deep traceback
        reason = " ".join(str(exc).split())[:200]
        raise Damaged(ckpt_dir, f"it cannot be read: {reason}") from None
    return model_state, train_state
