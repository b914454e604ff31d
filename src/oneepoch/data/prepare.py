"""``oneepoch prepare``: sources -> unique documents -> tokenizer -> token shards + manifest.

Streaming throughout: documents are read, de-duplicated (a set of 16-byte digests),
assigned to a split by a seeded hash of their content, tokenized in parallel batches and
appended to shards of bounded size; memory does not grow with the corpus except for the
digest set. The manifest is written last, under a temporary name then renamed, so a
directory without one is never mistaken for a finished dataset.

Nothing complete is lost: the new dataset is built in a hidden folder beside ``--out`` and
swapped into place in one atomic rename only once it is complete, so a failed or killed
prepare leaves the dataset that was there before as it was. ``--out`` is locked
(``oneepoch.locking``) while a prepare writes it; a second one is refused at once.
"""

from __future__ import annotations

import ctypes
import errno
import glob
import hashlib
import heapq
import json
import os
import queue
import re
import shutil
import stat
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from oneepoch import __version__
from oneepoch.atomic import fsync_dir, write_atomic
from oneepoch.config import check_seed
from oneepoch.data.dataset import MANIFEST, SET_ASIDE
from oneepoch.data.defaults import (
    DEFAULT_MAX_DOC_CHARS,
    DEFAULT_SAMPLE_CHARS,
    DEFAULT_SHARD_TOKENS,
    DEFAULT_VAL_FRACTION,
    DEFAULT_VOCAB_SIZE,
)
from oneepoch.data.resolve import resolve_source
from oneepoch.data.shards import ShardWriter, dtype_for_vocab, open_tokens
from oneepoch.data.sources import Source, Tally, split_long
from oneepoch.data.tokenizer import (
    BytesTokenizer,
    HFTokenizer,
    Tokenizer,
    check_bpe_vocab,
    load_tokenizer_file,
    train_bpe,
)
from oneepoch.errors import UserError
from oneepoch.locking import LOCK_NAME, hold

BATCH_CHARS = 4 << 20  # text handed to the tokenizer at once
BATCH_DOCS = 4096
SAMPLE_PIECE_CHARS = 1 << 16
CHECK_CHARS = 2 << 20  # text on which a BPE's tiktoken and tokenizers encodings must agree
MARKER = ".oneepoch-prepare"  # present while a prepare owns the directory
_OWNED = re.compile(
    r"^(?:(?:train|val)_\d{5,}\.bin(?:\.tmp)?|tokenizer\.json|tokenizer\.tiktoken"
    r"|manifest\.json(?:\.tmp)?|\.manifest\.json\.tmp)$"
)


def doc_digest(text: str) -> bytes | None:
    """Identity of a document for de-duplication: its words, whitespace-insensitive.
    None when the text is not valid Unicode (an unpaired surrogate from JSON)."""
    try:
        data = " ".join(text.split()).encode("utf-8")
    except UnicodeEncodeError:
        return None
    return hashlib.blake2b(data, digest_size=16).digest()


def split_value(seed: int, digest: bytes) -> float:
    """A uniform number in [0, 1) fixed by (seed, document): the split does not depend on
    the order documents arrive in."""
    key = seed.to_bytes(8, "little", signed=True)
    h = hashlib.blake2b(digest, key=key, digest_size=8).digest()
    return int.from_bytes(h, "little") / 2.0**64


def unique_documents(
    source: Source, tally: Tally, seen: set, max_chars: int
) -> Iterator[tuple[str, str, bytes]]:
    """(entry spec, text, digest) of each new document; long ones come as pieces."""
    for key, text in source.documents(tally, max_chars):
        if len(text) > max_chars:
            tally.add(key, "documents_split")
        for piece in split_long(text, max_chars):
            if not piece.strip():
                tally.add(key, "empty_documents")
                continue
            digest = doc_digest(piece)
            if digest is None:
                tally.bad(key, "document", "text holds an unpaired surrogate (not Unicode)")
                continue
            if digest in seen:
                tally.add(key, "duplicates_removed")
                continue
            seen.add(digest)
            yield key, piece, digest


class SplitWriter:
    """Token stream of one split, cut into shards of at most ``shard_tokens`` tokens."""

    def __init__(self, out: Path, name: str, dtype: np.dtype, shard_tokens: int):
        self.out, self.name, self.dtype, self.shard_tokens = out, name, dtype, shard_tokens
        self.shards: list[dict] = []
        self.writer: ShardWriter | None = None
        self.tokens = self.documents = self.chars = 0

    def write(self, tokens: np.ndarray, documents: int, chars: int) -> None:
        self.documents += documents
        self.chars += chars
        self.tokens += len(tokens)
        while len(tokens):
            if self.writer is None:
                path = self.out / f"{self.name}_{len(self.shards):05d}.bin"
                self.writer = ShardWriter(path, self.dtype)
            take = min(len(tokens), self.shard_tokens - self.writer.count)
            self.writer.write(tokens[:take])
            tokens = tokens[take:]
            if self.writer.count >= self.shard_tokens:
                self.shards.append(self.writer.close())
                self.writer = None

    def close(self) -> dict:
        if self.writer is not None:
            self.shards.append(self.writer.close())
            self.writer = None
        return {
            "tokens": self.tokens,
            "documents": self.documents,
            "chars": self.chars,
            "shards": self.shards,
        }

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None


def _is_ours(out: Path) -> bool:
    if (out / MARKER).exists():
        return True
    try:
        return json.loads((out / MANIFEST).read_text()).get("format") == "oneepoch-dataset"
    except (OSError, ValueError, AttributeError):
        return False


def check_output(out: Path) -> None:
    """Refuse an ``out`` that is a file, or a non-empty directory that is not a dataset."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a directory for the dataset.")
    if out.is_dir() and not _is_ours(out):
        if any(p.name != LOCK_NAME for p in out.iterdir()):
            raise UserError(
                f"--out {out} is not empty and is not a oneepoch dataset; choose a new or "
                "empty directory."
            )


def _is_dataset_file(name: str) -> bool:
    """Files a prepare writes (and replaces); everything else in --out is the user's."""
    return bool(_OWNED.match(name)) or name in (MARKER, LOCK_NAME)


def build_dir(out: Path) -> Path:
    """Where this process builds the new dataset: a hidden folder beside ``out`` (on the
    same filesystem, so the finished folder can be renamed into place)."""
    return out.parent / f".{out.name}.prepare-{os.getpid()}"


def _stale_builds(out: Path) -> list[Path]:
    pattern = f".{glob.escape(out.name)}.prepare-*"
    return [p for p in out.parent.glob(pattern) if p.is_dir() and not p.is_symlink()]


def _discard(folder: Path, out: Path) -> None:
    """Remove a build folder, or the old dataset swapped out of ``out``; files in it that a
    prepare does not write (the user's, kept beside the old dataset) go back to ``out``."""
    for path in folder.iterdir():
        if not _is_dataset_file(path.name) and not (out / path.name).exists():
            os.rename(path, out / path.name)
    shutil.rmtree(folder)


def _discard_quietly(folder: Path, out: Path) -> None:
    """``_discard`` that never raises (so it cannot hide a failure being reported): what it
    leaves, the next prepare removes."""
    try:
        if folder.is_dir():
            _discard(folder, out)
    except OSError:
        pass


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux renameat2); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    renameat2.argtypes += [ctypes.c_uint]
    at_cwd = -100
    if renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def replace_dataset(out: Path, build: Path) -> None:
    """Put the complete dataset in ``build`` at ``out`` in one atomic step: a kill at any
    moment leaves ``out`` holding either the complete old or the complete new dataset. The
    old one (with any files of the user's, which move over) then goes."""
    os.chmod(build, stat.S_IMODE(os.stat(out).st_mode))  # the folder keeps its permissions
    fsync_dir(build)
    if _exchange(out, build):
        fsync_dir(out.parent)
        _discard_quietly(build, out)  # `build` now names the old dataset
        return
    # No atomic exchange here (not Linux): two renames, with a moment without `out`.
    old = build.with_name(build.name + "-old")
    os.rename(out, old)
    os.rename(build, out)
    fsync_dir(out.parent)
    _discard_quietly(old, out)


def _disk_full(exc: BaseException, out: Path) -> UserError | None:
    """The error that says the disk (or the file-size limit) is full, when ``exc`` means
    that; None otherwise."""
    if not isinstance(exc, OSError):
        if "(os error 28)" not in str(exc):  # ENOSPC from a Rust library (tokenizers)
            return None
        exc = OSError(errno.ENOSPC, str(exc))
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(
            f"the disk is full (no space left on the device holding {out.parent}), so prepare "
            f"stopped and {out} is unchanged; free some space (the new dataset is built beside "
            "the old one, so it needs room for both) or choose --out on another disk."
        )
    if exc.errno == errno.EFBIG:
        return UserError(
            f"a dataset file grew past this shell's file-size limit (ulimit -f), so prepare "
            f"stopped and {out} is unchanged; raise the limit or use smaller --shard-tokens."
        )
    return None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _doc_hashes(out: Path, shards: list[dict], eot_id: int, chunk: int = 1 << 24):
    """Digest of each document's tokens, read back from the shards (documents end at EOT
    and may cross shard boundaries)."""
    h = hashlib.blake2b(digest_size=16)
    for entry in shards:
        tokens = open_tokens(out / entry["file"])
        for start in range(0, len(tokens), chunk):
            block = np.asarray(tokens[start : start + chunk])
            pos = 0
            for end in np.flatnonzero(block == eot_id):
                h.update(block[pos:end].tobytes())
                yield h.digest()
                h = hashlib.blake2b(digest_size=16)
                pos = end + 1
            h.update(block[pos:].tobytes())


def val_documents_in_train(out: Path, splits: dict, eot_id: int) -> int:
    """How many validation documents also occur, token for token, in train: the check
    that the split is honest, done on what was written rather than on what was meant."""
    val = set(_doc_hashes(out, splits["val"]["shards"], eot_id))
    return len(val.intersection(_doc_hashes(out, splits["train"]["shards"], eot_id)))


class _Reader(threading.Thread):
    """Reads, de-duplicates and splits documents into batches while the main thread
    tokenizes (the tokenizers release the GIL), so reading and encoding overlap."""

    def __init__(self, sources, tally, max_chars, is_val):
        super().__init__(daemon=True)
        self.sources, self.tally, self.max_chars, self.is_val = sources, tally, max_chars, is_val
        self.queue: queue.Queue = queue.Queue(maxsize=4)
        self.stop = threading.Event()
        self.chars_read = 0

    def _put(self, item) -> None:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.2)
                return
            except queue.Full:
                pass

    def run(self) -> None:
        try:
            seen: set[bytes] = set()
            batch, chars = [], 0
            for source in self.sources:
                for key, text, digest in unique_documents(source, self.tally, seen, self.max_chars):
                    if self.stop.is_set():
                        return
                    batch.append((key, text, self.is_val(digest)))
                    chars += len(text)
                    self.chars_read += len(text)
                    if chars >= BATCH_CHARS or len(batch) >= BATCH_DOCS:
                        self._put(batch)
                        batch, chars = [], 0
            if batch:
                self._put(batch)
            self._put(None)
        except BaseException as exc:  # handed to the main thread, which raises it
            self._put(exc)

    def batches(self):
        while True:
            item = self.queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


def _tokenizer_sample(sources, sample_chars, max_chars, is_val, tally=None) -> Iterator[str]:
    """Training text for the BPE: train-split documents only, at most ``sample_chars``,
    shared fairly between sources (one that runs short leaves its share to the rest), in
    pieces of at most ``SAMPLE_PIECE_CHARS``: the trainer pre-tokenizes a few hundred
    items at once, and small items keep that memory small."""
    seen: set[bytes] = set()
    left = sample_chars
    for i, source in enumerate(sources):
        budget = left // (len(sources) - i)
        used = 0
        for _, text, digest in unique_documents(source, tally or Tally(), seen, max_chars):
            if is_val(digest):
                continue
            yield from split_long(text[: budget - used], SAMPLE_PIECE_CHARS)
            used += min(len(text), budget - used)
            if used >= budget:
                break
        left -= used


def _val_threshold(sources, val_documents, seed, max_chars) -> float:
    """For ``--val-documents N``: the split value of the N-th smallest document, found in a
    reading pass that keeps only N numbers."""
    heap: list[float] = []  # negated: the largest of the N smallest sits on top
    seen: set[bytes] = set()
    tally = Tally()
    for source in sources:
        for _, _, digest in unique_documents(source, tally, seen, max_chars):
            value = -split_value(seed, digest)
            if len(heap) < val_documents:
                heapq.heappush(heap, value)
            elif value > heap[0]:
                heapq.heapreplace(heap, value)
    if not seen:
        raise UserError(_no_documents_message(sources, tally))
    if len(seen) <= val_documents:
        raise UserError(
            f"--val-documents {val_documents} leaves no training documents: the sources hold "
            f"only {len(seen)} distinct documents; ask for fewer."
        )
    return -heap[0]


def _resolve_tokenizer(spec: str, workers: int | None) -> Tokenizer | None:
    """A ready tokenizer, or None when one is to be trained ("bpe")."""
    if spec == "bpe":
        return None
    if spec == "bytes":
        return BytesTokenizer()
    return load_tokenizer_file(spec, workers)


def _check_sources(specs: Sequence[str], out: Path, text_field: str) -> list[Source]:
    if not specs:
        raise UserError("no --source given; pass a file, a folder, `builtin` or `hf:NAME`.")
    if len(set(specs)) != len(specs):
        raise UserError("the same --source is given twice; list each source once.")
    sources = [resolve_source(spec, text_field) for spec in specs]
    out_resolved = out.resolve()
    for source in sources:
        path = getattr(source, "path", None)
        if path is not None and out_resolved in (path.resolve(), *path.resolve().parents):
            raise UserError(
                f"source {source.spec} is inside --out {out}; write the data elsewhere."
            )
    return sources


def _split_rule(sources, seed, fraction, val_documents, max_chars, say) -> Callable:
    """Digest -> is this document in validation?"""
    if val_documents is None:
        return lambda digest: split_value(seed, digest) < fraction
    say("counting documents for --val-documents")
    threshold = _val_threshold(sources, val_documents, seed, max_chars)
    return lambda digest: split_value(seed, digest) <= threshold


def _ready_tokenizer(tok, sources, vocab_size, sample_chars, max_chars, is_val, workers, say):
    """The given tokenizer, or a BPE trained on the sample; a byte-level BPE switched to the
    tiktoken encoder where both agree. Returns it and the characters it was trained on."""
    used = 0
    sample_tally = Tally()
    check_texts: list[str] = []  # where the tiktoken encoder must agree with tokenizers
    if tok is None:
        say(f"training a {vocab_size}-token byte-level BPE")

        def counted():
            nonlocal used
            for text in _tokenizer_sample(sources, sample_chars, max_chars, is_val, sample_tally):
                if used < CHECK_CHARS:
                    check_texts.append(text)
                used += len(text)
                yield text

        tok = train_bpe(counted(), vocab_size, workers)
        if used == 0:
            raise UserError(_no_documents_message(sources, sample_tally))
    if isinstance(tok, HFTokenizer):
        if not check_texts:
            check_texts = list(_tokenizer_sample(sources, CHECK_CHARS, max_chars, lambda d: False))
        tok.use_tiktoken(check_texts)
    return tok, used


def _tokenize(sources, tok, writers, is_val, max_chars, started, progress):
    """The main pass: every unique document, tokenized, then end-of-text, into its split's
    shards. Returns the pass's tally and per-source written counts."""
    tally = Tally()
    written: dict[str, Counter] = defaultdict(Counter)
    reader = _Reader(sources, tally, max_chars, is_val)
    reader.start()
    eot = np.array([tok.eot_id], dtype=writers["train"].dtype)
    pending = None  # the latest train document, held back in case val stays empty
    last_report = time.perf_counter()
    try:
        for batch in reader.batches():
            encoded = tok.encode_batch([text for _, text, _ in batch])
            parts: dict[str, list] = {"train": [], "val": []}
            for (key, text, val), ids in zip(batch, encoded):
                if val:
                    parts["val"].append((key, text, ids))
                else:
                    if pending is not None:
                        parts["train"].append(pending)
                    pending = (key, text, ids)
            for split, docs in parts.items():
                if docs:
                    _write_docs(writers[split], docs, eot, written)
            if progress and time.perf_counter() - last_report > 10:
                last_report = time.perf_counter()
                _report(progress, reader.chars_read, writers, started)
    finally:
        reader.stop.set()
    if pending is not None:
        # A tiny corpus can put no document in val by chance; give it the last one.
        split = "val" if writers["val"].documents == 0 else "train"
        _write_docs(writers[split], [pending], eot, written)
    return tally, written


def prepare(
    sources: Sequence[str],
    out: str | Path,
    *,
    tokenizer: str = "bpe",
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    text_field: str = "text",
    val_fraction: float | None = None,
    val_documents: int | None = None,
    seed: int = 0,
    workers: int | None = None,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    max_doc_chars: int = DEFAULT_MAX_DOC_CHARS,
    tokenizer_sample_chars: int = DEFAULT_SAMPLE_CHARS,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Turn ``sources`` into a dataset directory ``out``; returns its manifest.

    ``sources`` are paths (text files or folders, .jsonl[.gz|.zst], .parquet, saved Hugging
    Face datasets), ``hf:NAME[:CONFIG]`` or ``builtin[:PARTS]``. ``tokenizer`` is ``bpe``
    (trained here with ``vocab_size``), ``bytes``, or a tokenizer.json / .tiktoken path.
    The validation split is ``val_fraction`` of the documents (default 1%) or exactly
    ``val_documents`` of them.
    """
    started = time.perf_counter()
    out = Path(out).expanduser()
    fraction = _val_fraction(val_fraction, val_documents)
    for flag, value in (("--max-doc-chars", max_doc_chars), ("--shard-tokens", shard_tokens)):
        if value < 1:
            raise UserError(f"{flag} must be at least 1, not {value}.")
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be at least 1, not {workers}.")
    check_seed(seed, "--seed")
    if tokenizer == "bpe":
        _check_bpe_options(vocab_size, tokenizer_sample_chars)
    srcs = _check_sources(sources, out, text_field)
    tok = _resolve_tokenizer(tokenizer, workers)  # before claiming: it may live in `out`

    if out.is_symlink():
        out = out.resolve()  # build beside, and swap, the folder the link points to
    check_output(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)  # it must exist to be locked
    try:
        with hold(out, "prepare"):
            for stale in _stale_builds(out):  # left by a killed prepare
                _discard_quietly(stale, out)
            build = _make_build_dir(out)
            try:
                try:
                    os.link(out / LOCK_NAME, build / LOCK_NAME)  # locked in place after the swap
                except OSError:
                    pass
                (build / MARKER).write_text(json.dumps({"pid": os.getpid(), "started": _now()}))
                options = dict(
                    seed=seed,
                    val_fraction=None if val_documents is not None else fraction,
                    val_documents=val_documents,
                    max_doc_chars=max_doc_chars,
                    shard_tokens=shard_tokens,
                )
                manifest = _build(
                    build, srcs, tok, vocab_size, tokenizer_sample_chars, workers, options,
                    started, progress
                )  # fmt: skip
                (build / MARKER).unlink()
                replace_dataset(out, build)
            except BaseException as exc:
                _discard_quietly(build, out)
                full = _disk_full(exc, out)
                if full is not None:
                    raise full from None
                raise
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # we made it for nothing
        raise
    return manifest


def _val_fraction(val_fraction: float | None, val_documents: int | None) -> float:
    """The validation fraction (the default when neither it nor a document count is given)."""
    if val_fraction is not None and val_documents is not None:
        raise UserError("give either --val-fraction or --val-documents, not both.")
    if val_documents is not None and val_documents < 1:
        raise UserError("--val-documents must be at least 1.")
    fraction = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
    if not 0 < fraction < 1:
        raise UserError(f"--val-fraction {fraction} must be between 0 and 1 (e.g. 0.01).")
    return fraction


def _check_bpe_options(vocab_size: int, sample_chars: int) -> None:
    """Before any work: a BPE tokenizer needs text to train on, and a vocabulary too large
    aborts natively."""
    if sample_chars < 1:
        raise UserError(
            "--tokenizer-sample-mb leaves no text to train the tokenizer on; give a "
            f"positive size in MiB (default {DEFAULT_SAMPLE_CHARS / 2**20:g})."
        )
    check_bpe_vocab(vocab_size)


def _make_build_dir(out: Path) -> Path:
    """The folder the new dataset is built in, beside ``out``."""
    build = build_dir(out)
    try:
        build.mkdir()
    except OSError as exc:
        raise _disk_full(exc, out) or UserError(
            f"cannot create {build} ({exc.strerror}): prepare builds the new dataset "
            f"beside {out} and swaps it in when complete; make {out.parent} writable "
            "or choose another --out."
        ) from None
    return build


def _build(out, srcs, tok, vocab_size, sample_chars, workers, options, started, progress):
    """Write a complete dataset (tokenizer, shards, manifest) into the new folder ``out``."""
    say = progress or (lambda message: None)
    max_doc_chars, shard_tokens = options["max_doc_chars"], options["shard_tokens"]
    writers: dict[str, SplitWriter] = {}
    try:
        is_val = _split_rule(
            srcs,
            options["seed"],
            options["val_fraction"],
            options["val_documents"],
            max_doc_chars,
            say,
        )
        tok, sample_chars = _ready_tokenizer(
            tok, srcs, vocab_size, sample_chars, max_doc_chars, is_val, workers, say
        )
        tok_info = tok.save(out)
        dtype = dtype_for_vocab(tok.vocab_size)
        writers = {s: SplitWriter(out, s, dtype, shard_tokens) for s in ("train", "val")}
        tally, written = _tokenize(srcs, tok, writers, is_val, max_doc_chars, started, progress)
        splits = {name: w.close() for name, w in writers.items()}
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise

    if splits["train"]["documents"] + splits["val"]["documents"] == 0:
        raise UserError(_no_documents_message(srcs, tally))
    if splits["train"]["documents"] == 0 or splits["val"]["documents"] == 0:
        raise UserError(
            "the sources hold only one distinct document; a train/validation split needs "
            "at least two (split the text into several files or records)."
        )
    say("checking that no validation document occurs in train")
    overlap = val_documents_in_train(out, splits, tok.eot_id)
    options = {
        **options,
        "wall_s": round(time.perf_counter() - started, 2),
        "oneepoch_version": __version__,
    }
    manifest = _manifest(
        tok_info, dtype, splits, srcs, tally, written, overlap, sample_chars, options
    )
    write_atomic(out / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest


def _write_docs(writer: SplitWriter, docs: list, eot: np.ndarray, written: dict) -> None:
    arrays, chars = [], 0
    for key, text, ids in docs:
        arrays += [ids, eot]
        chars += len(text)
        count = written[key]
        count["documents"] += 1
        count["tokens"] += len(ids) + 1
        count["chars"] += len(text)
    writer.write(np.concatenate(arrays), len(docs), chars)


def _report(say, chars_read: int, writers: dict, started: float) -> None:
    elapsed = time.perf_counter() - started
    tokens = sum(w.tokens for w in writers.values())
    docs = sum(w.documents for w in writers.values())
    say(
        f"{chars_read / 1e6:,.1f}M chars read, {docs:,} documents, {tokens / 1e6:,.1f}M tokens, "
        f"{chars_read / 1e6 / elapsed:.2f}M chars/s"
    )


# What kept every document out, in the words of the message that says no text was found.
_NO_TEXT_WORDS = {
    "bad_records": "bad records",
    "binary_files_skipped": "binary files skipped",
    "empty_documents": "empty documents",
    "files_ignored": "files of other types ignored",
}


def _no_documents_message(sources: list[Source], tally: Tally) -> str:
    skipped = [f"{tally.total(t)} {words}" for t, words in _NO_TEXT_WORDS.items() if tally.total(t)]
    example = next((e for found in tally.examples.values() for e in found), None)
    detail = ", ".join(skipped) + (f"; {example}" if example else "")
    detail = f" ({detail})" if detail else ""
    names = ", ".join(s.spec for s in sources)
    missing = tally.total("missing_field")
    if missing and missing == tally.total("bad_records"):
        field = next((s.field for s in sources if getattr(s, "field", None)), "text")
        fields = ", ".join(sorted(tally.fields_seen)[:10])
        have = f"; their fields are {fields}" if fields else ""
        return (
            f"no record in {names} has a {field!r} field ({missing} records lack it{have}); "
            "name the field that holds the text with --text-field."
        )
    return f"the sources ({names}) hold no text{detail}; point --source at non-empty text."


# A source's counts its manifest entry holds when not zero (bad records always).
_EXTRA_COUNTS = ("duplicates_removed", *(tally for tally, _, _ in SET_ASIDE), "files")


def _manifest(tok_info, dtype, splits, sources, tally, written, overlap, sample_chars, options):
    entries = []
    for source in sources:
        for entry in source.entries():
            key = entry["spec"]
            counts, done = tally.counts[key], written[key]
            entry.update(
                documents=done["documents"],
                tokens=done["tokens"],
                chars=done["chars"],
                bad_records=counts["bad_records"],
            )
            entry.update({k: counts[k] for k in _EXTRA_COUNTS if counts[k]})
            if tally.examples[key]:
                entry["bad_record_examples"] = tally.examples[key]
            entries.append(entry)
    tokens = sum(s["tokens"] for s in splits.values())
    docs = sum(s["documents"] for s in splits.values())
    chars = sum(s["chars"] for s in splits.values())
    return {
        "format": "oneepoch-dataset",
        "version": 1,
        "dtype": dtype.name,
        "tokenizer": tok_info,
        "splits": splits,
        "sources": entries,
        "stats": {
            "duplicates_removed": tally.total("duplicates_removed"),
            "bad_records": tally.total("bad_records"),
            # end-of-text tokens are not text, so they are left out of this ratio
            "chars_per_token": round(chars / max(1, tokens - docs), 4),
            **{key: tally.total(t) for t, key, _ in SET_ASIDE},
            "val_documents_in_train": overlap,
            "tokenizer_training_chars": sample_chars,
        },
        "prepare": options,
        "created": _now(),
    }
