"""The per-user cache (torch-free): measurements (``oneepoch.measure``) and built-in corpus
sources. ``$ONEEPOCH_CACHE`` moves it from ~/.cache/oneepoch.

A cache file is one JSON object; entries live at its top level or nested under keys
(``under``). Writers merge: they re-read the file first, since another process may have
added entries meanwhile, and replace it whole.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("ONEEPOCH_CACHE") or Path.home() / ".cache" / "oneepoch")


def read_entries(path: Path, *under: str) -> dict:
    """The JSON object stored at ``path`` (or nested in it under the keys ``under``); empty
    when missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    for key in under:
        data = data.get(key) if isinstance(data, dict) else None
    return data if isinstance(data, dict) else {}


def store_entries(path: Path, entries: dict, *under: str) -> None:
    """Merge ``entries`` into the JSON object at ``path`` (nested under the keys ``under``),
    written whole under a temporary name and renamed."""
    data = read_entries(path)
    node = data
    for key in under:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node.update(entries)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(path)
    except OSError:
        pass  # a read-only home only costs a re-measurement next time


def store_entry(path: Path, key: str, entry: dict) -> None:
    """Add ``key: entry`` to the JSON object at ``path`` (see ``store_entries``)."""
    store_entries(path, {key: entry})
