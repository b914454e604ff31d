"""Atomic checkpoints: a checkpoint directory exists under its final name only when complete.

Layout: ``checkpoints/step_00001234/{model.safetensors, state.pt}`` and a ``LATEST`` file
naming the newest. Each is written under a temporary name, fsynced and renamed, so a kill
at any moment leaves the previous checkpoint intact and loadable.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from oneepoch.atomic import fsync_dir, write_atomic
from oneepoch.errors import UserError


def save(ckpt_root: Path, step: int, model_state: dict, train_state: dict, keep: int = 2) -> Path:
    """Write a checkpoint for ``step``; returns its directory."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step_{step:08d}"
    tmp = ckpt_root / f".tmp_step_{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    tensors = {k: v.detach().cpu().contiguous() for k, v in model_state.items()}
    save_file(tensors, tmp / "model.safetensors")
    torch.save(train_state, tmp / "state.pt")
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(ckpt_root)
    write_atomic(ckpt_root / "LATEST", final.name.encode())
    for old in sorted(ckpt_root.glob("step_*"))[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(ckpt_root: Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    pointer = ckpt_root / "LATEST"
    if pointer.is_file():
        candidate = ckpt_root / pointer.read_text().strip()
        if (candidate / "model.safetensors").is_file() and (candidate / "state.pt").is_file():
            return candidate
    # LATEST missing or stale: fall back to the newest complete directory.
    complete = [
        d
        for d in sorted(ckpt_root.glob("step_*"))
        if (d / "model.safetensors").is_file() and (d / "state.pt").is_file()
    ]
    return complete[-1] if complete else None


def load(ckpt_dir: Path) -> tuple[dict, dict]:
    """(model state dict, training state) from a checkpoint directory."""
    try:
        model_state = load_file(ckpt_dir / "model.safetensors")
        train_state = torch.load(ckpt_dir / "state.pt", map_location="cpu", weights_only=False)
    except Exception as exc:  # a damaged file: say which, not a deep traceback
        raise UserError(
            f"checkpoint {ckpt_dir} cannot be read ({exc}); delete it to fall back to an older one."
        ) from None
    return model_state, train_state
