"""Token shard files: a 32-byte header, then little-endian token ids.

Writers put tokens in ``NAME.tmp`` and rename on close, so a shard that exists under its
final name is complete; the manifest (written last) lists each shard's checksum.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import numpy as np

from oneepoch.errors import UserError

MAGIC = b"OE1SHARD"
VERSION = 1
HEADER = struct.Struct("<8sIIQ8x")  # magic, version, bytes per token, token count, reserved
HEADER_SIZE = HEADER.size  # 32


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 65535 else np.dtype("<u4")


class ShardWriter:
    """Append token arrays to one shard; ``close()`` fixes the header and renames it."""

    def __init__(self, path: str | Path, dtype: np.dtype):
        self.path = Path(path)
        self.tmp_path = self.path.with_name(self.path.name + ".tmp")
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.count = 0
        self._hash = hashlib.sha256()
        self._file = open(self.tmp_path, "wb")
        self._file.write(b"\0" * HEADER_SIZE)

    def write(self, tokens: np.ndarray) -> None:
        data = np.ascontiguousarray(tokens, dtype=self.dtype).tobytes()
        self._file.write(data)
        self._hash.update(data)
        self.count += len(tokens)

    def close(self) -> dict:
        """Finish the shard; returns its manifest entry."""
        header = HEADER.pack(MAGIC, VERSION, self.dtype.itemsize, self.count)
        self._file.seek(0)
        self._file.write(header)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp_path, self.path)
        return {"file": self.path.name, "tokens": self.count, "sha256": self.sha256()}

    def sha256(self) -> str:
        """Checksum of the token payload (the header is checked separately)."""
        return self._hash.hexdigest()

    def abort(self) -> None:
        self._file.close()
        self.tmp_path.unlink(missing_ok=True)


def read_header(path: Path) -> tuple[np.dtype, int]:
    """Validate a shard's header and size; returns (dtype, token count)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER_SIZE)
    except FileNotFoundError:
        raise UserError(f"shard {path} is missing; run `oneepoch prepare` again.") from None
    if len(raw) < HEADER_SIZE:
        raise UserError(
            f"shard {path} is truncated (no complete header); run `oneepoch prepare` again."
        )
    magic, version, itemsize, count = HEADER.unpack(raw)
    if magic != MAGIC or version != VERSION or itemsize not in (2, 4):
        raise UserError(
            f"{path} is not a oneepoch shard (bad header); run `oneepoch prepare` again."
        )
    expected = HEADER_SIZE + itemsize * count
    actual = path.stat().st_size
    if actual != expected:
        raise UserError(
            f"shard {path} is truncated or corrupted ({actual} bytes, header says {expected}); "
            "run `oneepoch prepare` again."
        )
    return np.dtype("<u2" if itemsize == 2 else "<u4"), count


def open_tokens(path: Path) -> np.ndarray:
    """Memory-map a shard's tokens (read-only)."""
    dtype, count = read_header(path)
    if count == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_SIZE, shape=(count,))


def file_sha256(path: Path, offset: int = 0, chunk_bytes: int = 1 << 24) -> str:
    """sha256 of a file's bytes from ``offset`` on, read in bounded chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()


def payload_sha256(path: Path) -> str:
    """Checksum of a shard's tokens, as recorded in the manifest."""
    return file_sha256(path, offset=HEADER_SIZE)
