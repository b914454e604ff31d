"""A prepared dataset directory, as the trainer sees it: splits of concatenated tokens."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from oneepoch.data.shards import file_sha256, open_tokens, payload_sha256, read_header
from oneepoch.errors import UserError
from oneepoch.safefs import inside, is_plain_name

MANIFEST = "manifest.json"
# What `prepare` set aside or changed, as its manifest counts it: the tally behind each
# count, the count's key in the manifest's "stats", and what it is in words.
SET_ASIDE = (
    ("empty_documents", "empty_documents_skipped", "empty documents skipped"),
    ("binary_files_skipped", "binary_files_skipped", "binary files skipped"),
    ("files_ignored", "files_ignored", "other files ignored"),
    ("invalid_utf8_bytes", "invalid_utf8_bytes_replaced", "invalid UTF-8 bytes replaced"),
    ("documents_split", "documents_split", "long documents split"),
)


class Split:
    """The shards of one split seen as one long token array (read-only, memory-mapped)."""

    def __init__(self, shards: list[np.ndarray]):
        self._shards = [s for s in shards if len(s)]
        self._starts = np.cumsum([0] + [len(s) for s in self._shards])
        self.num_tokens = int(self._starts[-1])

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) as int64, crossing shard boundaries as needed."""
        if start < 0 or start + length > self.num_tokens:
            raise IndexError(f"range {start}+{length} outside split of {self.num_tokens} tokens")
        out = np.empty(length, dtype=np.int64)
        i = int(np.searchsorted(self._starts, start, side="right")) - 1
        filled = 0
        while filled < length:
            offset = start + filled - int(self._starts[i])
            take = min(length - filled, len(self._shards[i]) - offset)
            out[filled : filled + take] = self._shards[i][offset : offset + take]
            filled += take
            i += 1
        return out


@dataclass
class Dataset:
    path: Path
    manifest: dict
    train: Split
    val: Split

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["tokenizer"]["vocab_size"])

    @property
    def eot_id(self) -> int:
        return int(self.manifest["tokenizer"]["eot_id"])

    @property
    def tokenizer_sha256(self) -> str:
        return self.manifest["tokenizer"]["sha256"]

    @property
    def fingerprint(self) -> str:
        return dataset_fingerprint(self.manifest)


def dataset_fingerprint(manifest: dict) -> str:
    """What identifies a dataset's tokens: a sha256 over the tokenizer's hash, the token
    dtype and every shard's token count and checksum, split by split, in order.

    Two preparations that wrote the same tokens with the same tokenizer share it (file
    names, timestamps and source paths do not enter); any other text, tokenizer, split or
    order changes it. The trainer records it and refuses to resume on another. Cheap: it
    reads the manifest only (``open_dataset(verify_checksums=True)`` checks that the shards
    match their recorded checksums).
    """
    identity = {
        "tokenizer_sha256": manifest["tokenizer"]["sha256"],
        "dtype": manifest["dtype"],
        "splits": {
            name: [
                [shard["tokens"], shard["sha256"]] for shard in manifest["splits"][name]["shards"]
            ]
            for name in ("train", "val")
        },
    }
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def read_manifest(data_dir: str | Path) -> dict:
    path = Path(data_dir)
    if path.exists() and not path.is_dir():
        raise UserError(
            f"{path} is a file, not a dataset directory; give the folder that `oneepoch "
            "prepare --out` wrote (the one holding manifest.json)."
        )
    if not path.is_dir():
        raise UserError(
            f"data directory {path} does not exist; create it with `oneepoch prepare --source ... --out {path}`."
        )
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise UserError(
            f"{path} is not a prepared dataset (no {MANIFEST}; an interrupted prepare leaves none); "
            f"run `oneepoch prepare --source ... --out {path}`."
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(
            f"{manifest_path} is not valid JSON; run `oneepoch prepare` again."
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != "oneepoch-dataset":
        raise UserError(f"{manifest_path} is not a oneepoch dataset manifest.")
    problem = _manifest_problem(manifest)
    if problem:
        raise UserError(
            f"{manifest_path} is damaged ({problem}); run `oneepoch prepare` again to rebuild it."
        )
    return manifest


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _manifest_problem(m: dict) -> str | None:
    """What is wrong with a manifest's fields that readers rely on, or None."""
    tok = m.get("tokenizer")
    if not isinstance(tok, dict):
        return "no tokenizer entry"
    for key in ("vocab_size", "eot_id"):
        if not _is_count(tok.get(key)):
            return f"tokenizer {key} is {tok.get(key)!r}, not a whole number"
    if not 0 <= tok["eot_id"] < tok["vocab_size"]:
        return f"end-of-text id {tok['eot_id']} is outside the vocabulary of {tok['vocab_size']}"
    if not isinstance(tok.get("sha256"), str):
        return "the tokenizer has no sha256"
    if tok.get("file") is not None and not is_plain_name(tok["file"]):
        return f"tokenizer file is {tok.get('file')!r}, not a file name inside the folder"
    if m.get("dtype") not in ("uint16", "uint32"):
        return f"dtype is {m.get('dtype')!r}, not uint16 or uint32"
    splits = m.get("splits")
    if not isinstance(splits, dict):
        return "no splits"
    for name in ("train", "val"):
        info = splits.get(name)
        if not isinstance(info, dict) or not isinstance(info.get("shards"), list):
            return f"no {name} split"
        for key in ("tokens", "documents"):
            if not _is_count(info.get(key)):
                return f"{name} {key} is {info.get(key)!r}, not a whole number"
        for shard in info["shards"]:
            if not (
                isinstance(shard, dict)
                and is_plain_name(shard.get("file"))
                and _is_count(shard.get("tokens"))
                and isinstance(shard.get("sha256"), str)
            ):
                return f"a {name} shard entry is malformed ({str(shard)[:60]})"
    return None


def checked_tokenizer_file(data_dir: Path, info: dict) -> Path | None:
    """The dataset's tokenizer file (None for bytes), refused unless it made the shards."""
    if not info.get("file"):
        return None
    path = inside(data_dir, info["file"], "tokenizer file")
    if not path.is_file():
        raise UserError(f"tokenizer file {path} is missing; run `oneepoch prepare` again.")
    if file_sha256(path) != info["sha256"]:
        raise UserError(
            f"tokenizer {path} is not the one the shards were made with (hash differs); "
            "restore it or run `oneepoch prepare` again."
        )
    return path


def open_dataset(data_dir: str | Path, verify_checksums: bool = True) -> Dataset:
    """Open and check a prepared dataset.

    Always checks every shard's header and size against the manifest and that the
    tokenizer file is the one the shards were made with; with ``verify_checksums`` also
    re-hashes every shard (about 1 GB/s), which catches corruption that keeps the size.
    """
    path = Path(data_dir)
    manifest = read_manifest(path)
    checked_tokenizer_file(path, manifest["tokenizer"])
    splits = {}
    for name in ("train", "val"):
        info = manifest["splits"][name]
        arrays = []
        for entry in info["shards"]:
            shard_path = inside(path, entry["file"], "shard")
            _, count = read_header(shard_path)
            if count != entry["tokens"]:
                raise UserError(
                    f"shard {shard_path} holds {count} tokens but the manifest says {entry['tokens']}; "
                    "run `oneepoch prepare` again."
                )
            if verify_checksums and payload_sha256(shard_path) != entry["sha256"]:
                raise UserError(
                    f"shard {shard_path} is corrupted (checksum differs); run `oneepoch prepare` again."
                )
            arrays.append(open_tokens(shard_path))
        splits[name] = Split(arrays)
    return Dataset(path=path, manifest=manifest, train=splits["train"], val=splits["val"])
