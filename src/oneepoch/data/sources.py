"""Where documents come from, read as streams with bounded memory.

A source is a text file or a folder (.txt/.md, also .jsonl and .parquet inside it), a
JSONL file (plain, .gz or .zst) with a text field, a Parquet file with a text column, a
Hugging Face dataset saved with ``save_to_disk``, ``hf:NAME[:CONFIG]`` (streamed), or
``builtin``. Each yields ``(entry_spec, text)`` pairs and reports what it skipped to a
``Tally``, so nothing is dropped silently.

Invalid UTF-8: in text files the bad bytes become U+FFFD and are counted
(``invalid_utf8_bytes``); in JSONL a line that is not valid UTF-8 is a bad record.
"""

from __future__ import annotations

import codecs
import json
import os
import stat
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

from oneepoch.errors import UserError

TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst", ".text")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
READ_CHUNK = 1 << 20
MAX_RECORD_BYTES = 64 << 20  # longer JSONL lines are skipped (a JSON value parses whole)
MAX_EXAMPLES = 5


class Tally:
    """Counters per source entry for one pass, plus a few examples of bad records."""

    def __init__(self) -> None:
        self.counts: dict[str, Counter] = defaultdict(Counter)
        self.examples: dict[str, list[str]] = defaultdict(list)
        self.fields_seen: set[str] = set()  # keys of records that lack the text field

    def missing_field(self, key: str, where: str, field: str, record) -> None:
        """A record without the text field: bad, and its keys kept to suggest a field."""
        self.add(key, "missing_field")
        self.bad(key, where, f"no {field!r} field")
        if isinstance(record, dict) and len(self.fields_seen) < 50:
            self.fields_seen.update(str(k) for k in list(record)[:20])

    def add(self, key: str, field: str, n: int = 1) -> None:
        self.counts[key][field] += n

    def bad(self, key: str, where: str, reason: str) -> None:
        self.counts[key]["bad_records"] += 1
        if len(self.examples[key]) < MAX_EXAMPLES:
            self.examples[key].append(f"{where}: {reason}")

    def total(self, field: str) -> int:
        return sum(c[field] for c in self.counts.values())


# Invalid UTF-8 in text files is replaced and counted through this error handler.
_invalid_bytes = [0]


def _count_and_replace(exc: UnicodeDecodeError):
    _invalid_bytes[0] += exc.end - exc.start
    return ("\ufffd", exc.end)


codecs.register_error("oneepoch-count", _count_and_replace)


def cut_point(text: str, start: int, max_chars: int) -> int:
    """Where to end a piece starting at ``start``: a paragraph, line or word break if one
    falls in the second half of the window, else exactly ``max_chars`` on."""
    hi = start + max_chars
    lo = start + max_chars // 2
    for sep in ("\n\n", "\n", " "):
        i = text.rfind(sep, lo, hi)
        if i >= 0:
            return i + len(sep)
    return hi


def split_long(text: str, max_chars: int) -> Iterator[str]:
    """Cut a document longer than ``max_chars`` into pieces (linear time, no re-copying)."""
    start = 0
    while len(text) - start > max_chars:
        end = cut_point(text, start, max_chars)
        yield text[start:end]
        start = end
    yield text[start:] if start else text


_KINDS = {
    stat.S_IFIFO: "a FIFO, which would block until something writes to it",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFDIR: "a folder",
}


def check_readable(path: Path) -> None:
    """Refuse, in one sentence, a file that cannot be read as a source: a link that leads
    nowhere (broken, or a loop), anything but a regular file, or one without permission."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if os.path.islink(path):
            raise UserError(
                f"{path} is a symbolic link that leads nowhere ({exc.strerror}: broken or a "
                "loop); remove it or point it at a file."
            ) from None
        raise UserError(f"cannot read {path} ({exc.strerror}); fix it or leave it out.") from None
    if not stat.S_ISREG(mode):
        kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
        raise UserError(
            f"{path} is {kind}; sources are read from regular files only, so remove it from "
            "the folder or pass the files themselves."
        )
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
    except OSError as exc:
        raise UserError(
            f"cannot read {path} ({exc.strerror}); make it readable or leave it out of --source."
        ) from None


class TruncatedZstd(OSError):
    """A .zst file that ends inside a frame."""


def check_zstd_complete(path: Path) -> None:
    """Raise TruncatedZstd unless every zstd frame in ``path`` is complete: the library's
    stream reader stops quietly where a cut-short file ends, losing the rest unseen. Walks
    the frame and block headers (RFC 8878) with seeks; the content is checked as it is read."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:

        def take(n: int) -> bytes:
            data = f.read(n)
            if len(data) < n:
                raise TruncatedZstd(f"it ends inside a zstd frame, at byte {size:,}")
            return data

        while f.tell() != size:
            if f.tell() > size:  # a seek past the end: the last frame's content is cut
                raise TruncatedZstd(f"it ends inside a zstd frame, at byte {size:,}")
            magic = int.from_bytes(take(4), "little")
            if magic & 0xFFFFFFF0 == 0x184D2A50:  # a skippable frame
                f.seek(int.from_bytes(take(4), "little"), os.SEEK_CUR)
                continue
            if magic != 0xFD2FB528:
                return  # not zstd: the decompressor says so when it reads it
            fhd = take(1)[0]
            single = fhd >> 5 & 1
            fcs = (1 if single else 0, 2, 4, 8)[fhd >> 6]
            take((0 if single else 1) + (0, 1, 2, 4)[fhd & 3] + fcs)
            while True:
                header = int.from_bytes(take(3), "little")
                f.seek(1 if header >> 1 & 3 == 1 else header >> 3, os.SEEK_CUR)  # RLE: 1 byte
                if header & 1:
                    break
            f.seek(4 if fhd >> 2 & 1 else 0, os.SEEK_CUR)  # the content checksum


def looks_binary(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(8192)
    if b"\0" in head:
        return True
    control = sum(1 for b in head if b < 32 and b not in (9, 10, 12, 13, 27, 8))
    return bool(head) and control / len(head) > 0.1


def read_text_pieces(path: Path, max_chars: int, tally: Tally, key: str) -> Iterator[str]:
    """A text file as one document, streamed in bounded chunks and cut into pieces of at
    most ``max_chars`` characters when longer (so a multi-GB single line is fine)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="oneepoch-count")
    before = _invalid_bytes[0]
    buf = ""
    pieces = 0
    with open(path, "rb") as f:
        while True:
            raw = f.read(READ_CHUNK)
            buf += decoder.decode(raw, final=not raw)
            if not pieces and buf.startswith("\ufeff"):
                buf = buf[1:]  # a UTF-8 byte-order mark is not text
            while len(buf) > max_chars:
                end = cut_point(buf, 0, max_chars)
                yield buf[:end]
                pieces += 1
                buf = buf[end:]
            if not raw:
                break
    if buf or not pieces:
        yield buf
    if pieces:
        tally.add(key, "documents_split")
    if _invalid_bytes[0] != before:
        tally.add(key, "invalid_utf8_bytes", _invalid_bytes[0] - before)


def _open_binary(path: Path):
    name = path.name.lower()
    if name.endswith(".gz"):
        import gzip

        return gzip.open(path, "rb")
    if name.endswith(".zst"):
        import io

        import zstandard

        check_zstd_complete(path)
        raw = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), read_across_frames=True)
        return io.BufferedReader(raw, READ_CHUNK)
    return open(path, "rb")


def read_jsonl(path: Path, field: str, tally: Tally, key: str) -> Iterator[str]:
    """The ``field`` of each JSON object line; other lines are counted as bad records."""
    lineno = 0
    try:
        with _open_binary(path) as f:
            while True:
                line = f.readline(MAX_RECORD_BYTES + 1)
                if not line:
                    break
                lineno += 1
                if len(line) > MAX_RECORD_BYTES and not line.endswith(b"\n"):
                    while (rest := f.readline(READ_CHUNK)) and not rest.endswith(b"\n"):
                        pass  # skip the rest of the over-long line without holding it
                    tally.bad(key, f"{path.name}:{lineno}", f"record over {MAX_RECORD_BYTES} bytes")
                    continue
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except UnicodeDecodeError:
                    tally.bad(key, f"{path.name}:{lineno}", "not valid UTF-8")
                    continue
                except json.JSONDecodeError:
                    tally.bad(key, f"{path.name}:{lineno}", "not valid JSON")
                    continue
                if not isinstance(record, dict):
                    kind = type(record).__name__.replace("NoneType", "null")
                    tally.bad(key, f"{path.name}:{lineno}", f"a JSON {kind}, not an object")
                    continue
                if field not in record:
                    tally.missing_field(key, f"{path.name}:{lineno}", field, record)
                    continue
                text = record[field]
                if not isinstance(text, str):
                    tally.bad(key, f"{path.name}:{lineno}", f"{field!r} is not a string")
                    continue
                yield text
    except TruncatedZstd as exc:
        raise UserError(f"{path} is truncated ({exc}); fix or remove it.") from None
    except (OSError, EOFError) as exc:
        raise UserError(
            f"{path} could not be read after line {lineno} (corrupted or truncated: {exc}); "
            "fix or remove it."
        ) from None
    except Exception as exc:  # zstandard.ZstdError and zlib.error have no common base
        if type(exc).__module__.split(".")[0] in ("zstandard", "zlib"):
            raise UserError(
                f"{path} could not be decompressed after line {lineno} ({exc}); fix or remove it."
            ) from None
        raise


def read_parquet(path: Path, field: str, tally: Tally, key: str) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise UserError(f"{path} is not a readable Parquet file ({exc}).") from None
    names = pf.schema_arrow.names
    if field not in names:
        raise UserError(
            f"{path} has no column {field!r} (columns: {', '.join(names)}); choose one with "
            "--text-field."
        )
    row = 0
    for batch in pf.iter_batches(batch_size=1024, columns=[field]):
        for value in batch.column(0).to_pylist():
            row += 1
            if isinstance(value, str):
                yield value
            else:
                tally.bad(key, f"{path.name} row {row}", f"{field!r} is not a string")


def classify(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(TEXT_SUFFIXES):
        return "text"
    return None


def is_saved_hf_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    )


class Source:
    """One ``--source`` value. ``entries`` are its manifest records (one per part)."""

    kind = ""
    license = "unknown (user-provided data; check its terms)"

    def __init__(self, spec: str):
        self.spec = spec

    @property
    def provenance(self) -> str:
        return self.spec

    def entries(self) -> list[dict]:
        return [
            {
                "spec": self.spec,
                "kind": self.kind,
                "provenance": self.provenance,
                "license": self.license,
            }
        ]

    def documents(self, tally: Tally, max_chars: int) -> Iterator[tuple[str, str]]:
        raise NotImplementedError


class FileSource(Source):
    def __init__(self, spec: str, path: Path, kind: str, field: str):
        super().__init__(spec)
        self.path, self.kind, self.field = path, kind, field

    @property
    def provenance(self) -> str:
        return f"file {self.path.resolve()} ({self.path.stat().st_size} bytes)"

    def read_file(self, path: Path, kind: str, tally: Tally, max_chars: int) -> Iterator[str]:
        tally.add(self.spec, "files")
        if kind == "jsonl":
            yield from read_jsonl(path, self.field, tally, self.spec)
        elif kind == "parquet":
            yield from read_parquet(path, self.field, tally, self.spec)
        else:
            yield from read_text_pieces(path, max_chars, tally, self.spec)

    def documents(self, tally: Tally, max_chars: int) -> Iterator[tuple[str, str]]:
        for text in self.read_file(self.path, self.kind, tally, max_chars):
            yield self.spec, text


class FolderSource(FileSource):
    """Every .txt/.md/.jsonl/.parquet file under a folder, in sorted order; binary files
    with a text suffix are skipped and counted, other files ignored and counted."""

    kind = "folder"

    def __init__(self, spec: str, path: Path, field: str):
        super().__init__(spec, path, "folder", field)

    @property
    def provenance(self) -> str:
        return f"folder {self.path.resolve()}"

    def files(self) -> Iterator[tuple[Path, str | None]]:
        def unreadable(exc: OSError):
            raise UserError(
                f"cannot read folder {exc.filename} ({exc.strerror}); make it readable or move "
                f"it out of {self.spec}."
            )

        for dirpath, dirnames, filenames in os.walk(self.path, onerror=unreadable):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if not name.startswith("."):
                    path = Path(dirpath) / name
                    yield path, classify(path)

    def documents(self, tally: Tally, max_chars: int) -> Iterator[tuple[str, str]]:
        for path, kind in self.files():
            if kind is None:
                tally.add(self.spec, "files_ignored")
                continue
            check_readable(path)
            if kind == "text" and looks_binary(path):
                tally.add(self.spec, "binary_files_skipped")
            else:
                for text in self.read_file(path, kind, tally, max_chars):
                    yield self.spec, text


class HFDiskSource(Source):
    """A dataset saved with ``datasets``' ``save_to_disk`` (every split of a DatasetDict)."""

    kind = "hf-disk"

    def __init__(self, spec: str, path: Path, field: str):
        super().__init__(spec)
        self.path, self.field = path, field

    @property
    def provenance(self) -> str:
        return f"Hugging Face dataset saved at {self.path.resolve()}"

    def _splits(self):
        import datasets

        try:
            ds = datasets.load_from_disk(str(self.path))
        except Exception as exc:
            raise UserError(f"{self.path} is not a readable saved dataset ({exc}).") from None
        parts = ds.items() if isinstance(ds, datasets.DatasetDict) else [("", ds)]
        for name, split in sorted(parts):
            if self.field not in split.column_names:
                raise UserError(
                    f"dataset {self.path} has no column {self.field!r} (columns: "
                    f"{', '.join(split.column_names)}); choose one with --text-field."
                )
            yield name, split

    def documents(self, tally: Tally, max_chars: int) -> Iterator[tuple[str, str]]:
        for name, split in self._splits():
            row = 0
            for batch in split.select_columns([self.field]).iter(batch_size=1000):
                for value in batch[self.field]:
                    row += 1
                    if isinstance(value, str):
                        yield self.spec, value
                    else:
                        where = f"{name or 'dataset'} row {row}"
                        tally.bad(self.spec, where, f"{self.field!r} is not a string")


class HFStreamSource(Source):
    """``hf:NAME[:CONFIG]``: the train split of a Hub dataset, streamed (needs network)."""

    kind = "hf"

    def __init__(self, spec: str, field: str):
        super().__init__(spec)
        name, _, config = spec[3:].partition(":")
        if not name:
            raise UserError(f"source {spec!r} names no dataset; write hf:NAME or hf:NAME:CONFIG.")
        self.name, self.config, self.field = name, config or None, field
        self.license = "see the dataset card on the Hugging Face Hub"

    @property
    def provenance(self) -> str:
        config = f", config {self.config}" if self.config else ""
        return f"Hugging Face Hub dataset {self.name}{config}, split train, streamed"

    def check_reachable(self, timeout: float = 10.0) -> None:
        """Say at once when the Hub cannot be reached: the client would retry for half a
        minute, printing each retry, before failing the same way."""
        import socket
        from urllib.parse import urlsplit

        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            return  # offline on purpose: the datasets cache answers, or says why not
        url = urlsplit(constants.ENDPOINT)
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            socket.create_connection((url.hostname, port), timeout=timeout).close()
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise UserError(
                f"cannot reach the Hugging Face Hub at {constants.ENDPOINT} ({reason}), so "
                f"{self.spec} cannot be streamed; check the network, or pass a folder saved "
                "with save_to_disk."
            ) from None

    def documents(self, tally: Tally, max_chars: int) -> Iterator[tuple[str, str]]:
        import logging

        import datasets

        logging.getLogger("huggingface_hub").setLevel(logging.ERROR)  # no line per retry
        row = 0
        try:
            ds = datasets.load_dataset(self.name, self.config, split="train", streaming=True)
            for record in ds:
                row += 1
                value = record.get(self.field) if isinstance(record, dict) else None
                if isinstance(value, str):
                    yield self.spec, value
                elif not isinstance(record, dict) or self.field not in record:
                    where = f"{self.name} row {row}"
                    tally.missing_field(self.spec, where, self.field, record)
                else:
                    where = f"{self.name} row {row}"
                    tally.bad(self.spec, where, f"no string {self.field!r} field")
        except (UserError, GeneratorExit):
            raise
        except Exception as exc:
            raise UserError(
                f"could not stream Hugging Face dataset {self.name!r} after {row} rows "
                f"({type(exc).__name__}: {exc}); check the name and network, or pass a folder "
                "saved with save_to_disk."
            ) from None
