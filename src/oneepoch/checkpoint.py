"""Atomic, checksummed checkpoints: a checkpoint directory exists under its final name only
when complete, and says what its files' bytes must hash to.

Layout: ``checkpoints/step_00001234/{model.safetensors, state.safetensors, state.json,
checksums.json}`` and a ``LATEST`` file naming the newest. Each is written under a temporary
name, fsynced and renamed, so a kill at any moment leaves the previous checkpoint intact and
loadable. ``checksums.json`` holds the sha256 of the other files; ``load`` verifies it, so a
checkpoint damaged on disk afterwards is reported instead of loaded.

Checkpoints travel between people, so they hold data only: the training state (optimizer
moments, the loss accumulator) is split into its tensors, in ``state.safetensors``, and
everything else, in ``state.json`` (oneepoch.statecodec). Nothing in a checkpoint is
unpickled. A checkpoint of an older oneepoch (``state.pt``, a pickle) is refused with a
sentence naming ``oneepoch upgrade-checkpoints``, which converts it without running code.
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

from oneepoch import statecodec
from oneepoch.atomic import fsync_dir, write_atomic
from oneepoch.errors import UserError
from oneepoch.rundir import CHECKPOINTS
from oneepoch.safefs import refuse_links, remove_tree

MODEL, STATE_TENSORS, STATE_JSON = "model.safetensors", "state.safetensors", "state.json"
FILES = (MODEL, STATE_TENSORS, STATE_JSON)
CHECKSUMS = "checksums.json"
LEGACY_STATE = "state.pt"  # a pickle, written by older versions; never loaded by `load`
_NAME = re.compile(r"step_\d{8}")


class Legacy(UserError):
    """A checkpoint in the pickled format of older versions: loading it could run code."""

    def __init__(self, ckpt_dir: Path):
        run = ckpt_dir.parent.parent
        super().__init__(
            f"checkpoint {ckpt_dir} was written by an older oneepoch as a pickle ({LEGACY_STATE}), "
            "which can run code when loaded, so it is not read; if you trust where the run came "
            f"from, convert it with `oneepoch upgrade-checkpoints {run}` (it reads only tensors "
            "and plain values), or start the run again with another --out."
        )
        self.ckpt_dir = ckpt_dir


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
        write_files(tmp, model_state, train_state)
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


def write_files(folder: Path, model_state: dict, train_state: dict) -> None:
    """The checkpoint's data files in ``folder``, each fsynced (not the checksums)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model_state.items()}
    save_file(tensors, folder / MODEL)
    state_tensors, state_plain = statecodec.split(train_state)
    save_file(state_tensors, folder / STATE_TENSORS)
    for name in (MODEL, STATE_TENSORS):
        with open(folder / name, "rb") as fh:
            os.fsync(fh.fileno())
    write_atomic(folder / STATE_JSON, statecodec.dumps(state_plain))


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
    """Complete in the current format, or in the old one (which ``load`` then refuses, so a
    resume never mistakes an old run for one without checkpoints and starts it over)."""
    return is_legacy(d) or all((d / name).is_file() for name in FILES)


def is_legacy(d: Path) -> bool:
    """Holds the old pickle (perhaps half converted: ``upgrade`` removes it last)."""
    return (d / LEGACY_STATE).exists()


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


def verify(ckpt_dir: Path, files: tuple[str, ...] = FILES) -> None:
    """Raise Damaged unless every file hashes to what checksums.json says."""
    path = ckpt_dir / CHECKSUMS
    if not path.exists():
        if files != FILES:
            return  # an old checkpoint, written before checksums existed
        raise Damaged(ckpt_dir, f"{CHECKSUMS} is missing")
    try:
        sums = json.loads(path.read_text())["sha256"]
        if not isinstance(sums, dict):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        raise Damaged(ckpt_dir, f"{CHECKSUMS} is unreadable") from None
    for name in files:
        try:
            ok = sums.get(name) == file_sha256(ckpt_dir / name)
        except OSError as exc:
            raise Damaged(ckpt_dir, f"{name} cannot be read: {exc.strerror}") from None
        if not ok:
            raise Damaged(ckpt_dir, f"the checksum of {name} differs from the one written")


def load(ckpt_dir: Path) -> tuple[dict, dict]:
    """(model state dict, training state) from a checkpoint directory, verified first.

    Reads safetensors and JSON only; an old pickled checkpoint raises Legacy."""
    if is_legacy(ckpt_dir):
        raise Legacy(ckpt_dir)
    verify(ckpt_dir)
    try:
        model_state = load_file(ckpt_dir / MODEL)
        plain = statecodec.loads((ckpt_dir / STATE_JSON).read_bytes())
        train_state = statecodec.join(plain, load_file(ckpt_dir / STATE_TENSORS))
    except Exception as exc:  # a damaged file: say which, not a deep traceback
        reason = " ".join(str(exc).split())[:200]
        raise Damaged(ckpt_dir, f"it cannot be read: {reason}") from None
    return model_state, train_state


def upgrade(ckpt_dir: Path) -> bool:
    """Rewrite an old pickled checkpoint in the current format; False if it was not old.

    The pickle is read with torch's restricted unpickler (``weights_only=True``): tensors and
    plain values only, so a planted object is refused, never run. Its checksums (when it has
    them) are verified first. The new files are written beside the old one and the pickle is
    removed last, so a kill at any moment leaves a checkpoint this function converts again."""
    if not is_legacy(ckpt_dir):
        return False
    verify(ckpt_dir, files=(MODEL, LEGACY_STATE))
    try:
        train_state = torch.load(ckpt_dir / LEGACY_STATE, map_location="cpu", weights_only=True)
        model_state = load_file(ckpt_dir / MODEL)
    except Exception as exc:
        reason = " ".join(str(exc).split())[:200]
        raise UserError(
            f"checkpoint {ckpt_dir} holds more than tensors and plain values or cannot be read "
            f"({reason}), so it is not converted; start the run again with another --out."
        ) from None
    write_files(ckpt_dir, model_state, train_state)
    # The old file's sum stays listed until it is gone, so a second try verifies it again.
    sums = {name: file_sha256(ckpt_dir / name) for name in (*FILES, LEGACY_STATE)}
    write_atomic(ckpt_dir / CHECKSUMS, (json.dumps({"sha256": sums}, indent=2) + "\n").encode())
    os.unlink(ckpt_dir / LEGACY_STATE)
    fsync_dir(ckpt_dir)
    return True


def upgrade_all(folder: Path) -> tuple[list[Path], int]:
    """Convert every old checkpoint under ``folder`` (a run, or a job of many runs); returns
    (the converted ones, how many were already current). Links are not followed."""
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder; give a run directory or a job's --out.")
    converted, current = [], 0
    for root, dirs, _ in os.walk(folder):
        dirs.sort()
        if Path(root).name != CHECKPOINTS:
            continue
        for name in list(dirs):
            d = Path(root) / name
            if _NAME.fullmatch(name) and not d.is_symlink():
                if upgrade(d):
                    converted.append(d)
                else:
                    current += 1
        dirs.clear()
    if not converted and not current:
        raise UserError(f"{folder} holds no checkpoints; give a run directory or a job's --out.")
    return converted, current
