"""Which source a ``--source`` value names: ``builtin[:NAME]``, ``hf:NAME``, a saved Hugging
Face dataset, a folder or a file; checked up front, so that what is wrong is said before any
corpus is read."""

from __future__ import annotations

import os
from pathlib import Path

from oneepoch.data.builtin import BuiltinSource
from oneepoch.data.sources import (
    FileSource,
    FolderSource,
    HFDiskSource,
    HFStreamSource,
    Source,
    check_readable,
    classify,
    is_saved_hf_dataset,
    looks_binary,
)
from oneepoch.errors import UserError


def resolve_source(spec: str, text_field: str = "text") -> Source:
    """Check a ``--source`` value and say clearly what is wrong with it."""
    if spec == "builtin" or spec.startswith("builtin:"):
        return BuiltinSource(spec)
    if spec.startswith("hf:"):
        source = HFStreamSource(spec, text_field)
        source.check_reachable()
        return source
    path = Path(spec).expanduser()
    if os.path.islink(path) and not path.exists():
        check_readable(path)  # a broken or looping link: say so
    if not path.exists():
        raise UserError(
            f"source {spec} does not exist; pass a file, a folder, `builtin` or `hf:NAME`."
        )
    if path.is_dir():
        if is_saved_hf_dataset(path):
            return HFDiskSource(spec, path, text_field)
        folder = FolderSource(spec, path, text_field)
        readable = [check_readable(p) for p, kind in folder.files() if kind]  # refused up front
        if not readable:
            raise UserError(
                f"folder {spec} contains no .txt, .md, .jsonl or .parquet files; point "
                "--source at your text."
            )
        return folder
    check_readable(path)
    kind = classify(path) or "text"
    if kind == "text" and looks_binary(path):
        raise UserError(
            f"{spec} looks like a binary file, not text; pass text (.txt/.md), .jsonl or .parquet."
        )
    return FileSource(spec, path, kind, text_field)
