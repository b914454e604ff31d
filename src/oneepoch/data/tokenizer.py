"""Tokenizers a dataset can be made with, behind one small interface.

Kinds: a byte-level BPE trained here (saved as tokenizer.json), a user's tokenizer.json,
a tiktoken ranks file (GPT-2 split pattern, end-of-text id = number of ranks), raw bytes
(256 ids + end-of-text). Every tokenizer has ``encode``, ``decode``, ``encode_batch``
(parallel, returns numpy arrays), ``vocab_size`` and ``eot_id``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from oneepoch.data.dataset import checked_tokenizer_file
from oneepoch.data.shards import file_sha256
from oneepoch.errors import UserError

EOT = "<|endoftext|>"
# Other names tokenizer.json files use for their end-of-document token, in order of preference.
EOT_CANDIDATES = (EOT, "<|end_of_text|>", "</s>", "<eos>", "[EOS]")
# The bytes tokenizer has no file; its manifest hash names the scheme so it still pins it.
BYTES_SHA256 = hashlib.sha256(b"oneepoch-bytes-v1").hexdigest()
MIN_BPE_VOCAB = 258  # 256 byte symbols + end-of-text + at least one merge
MAX_VOCAB = 2**32  # shards store ids as uint32 at most (oneepoch.data.shards)
# What the BPE trainer (HF tokenizers) sets aside per requested token before it starts: a
# hash table of 33-byte entries sized to a power of two, 44-71 bytes per token as measured
# at 1e8 and 1e9 tokens; asking for more than the machine has aborts the process.
BPE_TRAINER_BYTES_PER_TOKEN = 72


def _workers(workers: int | None) -> int:
    return max(1, workers or os.cpu_count() or 1)


class Tokenizer:
    """What every kind offers; ``save`` writes its file (if any) and returns its manifest entry."""

    kind: str
    file_name: str | None = None
    vocab_size: int
    eot_id: int

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def save(self, data_dir: Path) -> dict:
        raise NotImplementedError

    def _manifest(self, sha256: str) -> dict:
        return {
            "kind": self.kind,
            "file": self.file_name,
            "sha256": sha256,
            "vocab_size": self.vocab_size,
            "eot_id": self.eot_id,
        }


class BytesTokenizer(Tokenizer):
    kind = "bytes"
    vocab_size = 257
    eot_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8).astype(np.uint16) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        parts, current = [], bytearray()
        for i in ids:
            if i == self.eot_id:
                parts.append(current.decode("utf-8", errors="replace"))
                current = bytearray()
            elif 0 <= i < 256:
                current.append(i)
        parts.append(current.decode("utf-8", errors="replace"))
        return EOT.join(parts)

    def save(self, data_dir: Path) -> dict:
        return self._manifest(BYTES_SHA256)


class TiktokenEngine:
    """Encodes with tiktoken: BPE ranks, GPT-2's split pattern, documents spread over
    threads (tiktoken releases the GIL). Several times faster than ``tokenizers``."""

    def __init__(
        self, ranks: dict[bytes, int], eot_id: int, vocab_size: int, name: str, workers: int | None
    ):
        import tiktoken
        from tiktoken_ext.openai_public import r50k_pat_str

        self.enc = tiktoken.Encoding(
            name=name, pat_str=r50k_pat_str, mergeable_ranks=ranks, special_tokens={EOT: eot_id}
        )
        self.workers = _workers(workers)
        self.dtype = np.uint16 if vocab_size <= 65535 else np.uint32

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def _one(self, text: str) -> np.ndarray:
        # disallowed_special=(): a literal "<|endoftext|>" in the corpus is plain text
        return self.enc.encode_to_numpy(text, disallowed_special=()).astype(self.dtype)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        if self.workers == 1 or len(texts) < 2:
            return [self._one(t) for t in texts]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(self._one, texts))

    def decode(self, ids: Iterable[int]) -> str:
        return self.enc.decode(list(ids), errors="replace")


def _gpt2_byte_decoder() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte, reversed (byte-level BPE vocabularies
    spell tokens with these)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def bytelevel_ranks(tok) -> dict[bytes, int] | None:
    """The BPE of a byte-level tokenizer.json as tiktoken ranks (token bytes -> id), or None
    when the tokenizer is not a plain GPT-2-style byte-level BPE."""
    spec = json.loads(tok.to_str())
    pre = spec.get("pre_tokenizer") or {}
    model = spec.get("model") or {}
    if (
        model.get("type") != "BPE"
        or spec.get("normalizer") is not None
        or pre.get("type") != "ByteLevel"
        or pre.get("add_prefix_space")
        or not pre.get("use_regex", True)
    ):
        return None
    decoder = _gpt2_byte_decoder()
    added = {t["content"] for t in spec.get("added_tokens") or []}
    vocab = {token: rank for token, rank in model["vocab"].items() if token not in added}
    ranks = {}
    for token, rank in vocab.items():
        if any(c not in decoder for c in token):
            return None
        ranks[bytes(decoder[c] for c in token)] = rank
    if len(ranks) != len(vocab) or any(bytes([b]) not in ranks for b in range(256)):
        return None
    return ranks


class HFTokenizer(Tokenizer):
    """A Hugging Face ``tokenizers`` tokenizer (trained here or loaded from tokenizer.json).

    A byte-level BPE can encode through tiktoken instead (``use_tiktoken``), checked to give
    the same ids; the manifest records which encoder made the shards."""

    file_name = "tokenizer.json"

    def __init__(self, tok, kind: str, workers: int | None = None):
        self.tok = tok
        self.kind = kind
        self.workers = workers
        self.fast: TiktokenEngine | None = None
        # Corpus text that happens to spell "<|endoftext|>" must stay text, not become a
        # document boundary.
        tok.encode_special_tokens = True
        vocab = tok.get_vocab(with_added_tokens=True)
        eot = next((name for name in EOT_CANDIDATES if name in vocab), None)
        if eot is None:
            tok.add_special_tokens([EOT])
            vocab = tok.get_vocab(with_added_tokens=True)
            eot = EOT
        self.eot_id = vocab[eot]
        self.vocab_size = max(tok.get_vocab_size(with_added_tokens=True), max(vocab.values()) + 1)

    def use_tiktoken(self, check_texts: list[str] | None = None) -> bool:
        """Encode with tiktoken from now on if this is a byte-level BPE and, given
        ``check_texts``, both encoders agree on every one of them."""
        ranks = bytelevel_ranks(self.tok)
        if ranks is None:
            return False
        name = f"oneepoch-bpe-{id(self)}"
        fast = TiktokenEngine(ranks, self.eot_id, self.vocab_size, name, self.workers)
        if check_texts:
            slow = self.tok.encode_batch_fast(check_texts, add_special_tokens=False)
            if any(fast.encode(t) != e.ids for t, e in zip(check_texts, slow)):
                return False
        self.fast = fast
        return True

    def encode(self, text: str) -> list[int]:
        if self.fast:
            return self.fast.encode(text)
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        if self.fast:
            return self.fast.encode_batch(texts)
        dtype = np.uint16 if self.vocab_size <= 65535 else np.uint32
        encodings = self.tok.encode_batch_fast(texts, add_special_tokens=False)
        return [np.array(e.ids, dtype=dtype) for e in encodings]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def save(self, data_dir: Path) -> dict:
        path = data_dir / self.file_name
        self.tok.save(str(path))
        info = self._manifest(file_sha256(path))
        info["encoder"] = "tiktoken" if self.fast else "tokenizers"
        return info


class TiktokenTokenizer(Tokenizer):
    """A tiktoken BPE ranks file with GPT-2's split pattern; end-of-text follows the ranks."""

    kind = "tiktoken"
    file_name = "tokenizer.tiktoken"

    def __init__(self, path: Path, workers: int | None = None):
        from tiktoken.load import load_tiktoken_bpe

        self.path = Path(path)
        # Kept in memory so saving works even when prepare has cleared the file's folder.
        self.data = self.path.read_bytes()
        self.sha256 = hashlib.sha256(self.data).hexdigest()
        try:
            # The hash keeps tiktoken's path-keyed cache from returning an older file's ranks.
            ranks = load_tiktoken_bpe(str(self.path), expected_hash=self.sha256)
        except Exception as exc:
            raise UserError(
                f"{self.path} is not a tiktoken BPE ranks file ({exc}); pass a file of "
                "'base64-token rank' lines such as gpt2.tiktoken."
            ) from None
        if not ranks:
            raise UserError(f"{self.path} holds no BPE ranks; pass a non-empty .tiktoken file.")
        self.eot_id = max(ranks.values()) + 1
        self.vocab_size = self.eot_id + 1
        name = f"oneepoch-{self.sha256[:12]}"
        self.engine = TiktokenEngine(ranks, self.eot_id, self.vocab_size, name, workers)

    def encode(self, text: str) -> list[int]:
        return self.engine.encode(text)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return self.engine.encode_batch(texts)

    def decode(self, ids: Iterable[int]) -> str:
        return self.engine.decode(ids)

    def save(self, data_dir: Path) -> dict:
        (data_dir / self.file_name).write_bytes(self.data)
        return self._manifest(self.sha256)


def _set_rayon_threads(workers: int | None) -> None:
    # tokenizers' Rust thread pool reads this once, on its first parallel call.
    if workers:
        os.environ.setdefault("RAYON_NUM_THREADS", str(workers))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")


def check_bpe_vocab(vocab_size: int) -> None:
    """Refuse a BPE vocabulary too small to merge anything, larger than the shards' ids can
    hold, or larger than the trainer can set memory aside for (it would abort natively)."""
    if vocab_size < MIN_BPE_VOCAB:
        raise UserError(
            f"--vocab-size {vocab_size} is too small for a byte-level BPE; use at least "
            f"{MIN_BPE_VOCAB} (or --tokenizer bytes)."
        )
    if vocab_size > MAX_VOCAB:
        raise UserError(
            f"--vocab-size {vocab_size:,} is more than the {MAX_VOCAB:,} token ids a dataset's "
            "shards can hold (uint32); use a smaller vocabulary (4,096 to 65,536 is usual)."
        )
    import psutil

    need, free = vocab_size * BPE_TRAINER_BYTES_PER_TOKEN, psutil.virtual_memory().available
    if need > free:
        raise UserError(
            f"--vocab-size {vocab_size:,} needs about {need / 1e9:,.1f} GB of memory to train "
            f"the BPE (its trainer sets aside about {BPE_TRAINER_BYTES_PER_TOKEN} bytes per "
            f"token), more than the {free / 1e9:,.1f} GB free; use a smaller vocabulary "
            "(4,096 to 65,536 is usual)."
        )


def train_bpe(texts: Iterable[str | list[str]], vocab_size: int, workers: int | None = None):
    """Train a GPT-2-style byte-level BPE on ``texts`` (strings or batches of strings)."""
    check_bpe_vocab(vocab_size)
    _set_rayon_threads(workers)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return HFTokenizer(tok, kind="bpe", workers=workers)


def load_tokenizer_file(path: str | Path, workers: int | None = None) -> Tokenizer:
    """A tokenizer.json (any name ending .json) or a .tiktoken ranks file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"tokenizer file {path} does not exist; pass bpe, bytes, a tokenizer.json or a "
            ".tiktoken file."
        )
    if path.name.endswith(".tiktoken"):
        return TiktokenTokenizer(path, workers)
    if path.name.endswith(".json"):
        _set_rayon_threads(workers)
        from tokenizers import Tokenizer

        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as exc:
            raise UserError(
                f"{path} is not a Hugging Face tokenizer.json ({exc}); pass a file saved by "
                "tokenizers or transformers."
            ) from None
        return HFTokenizer(tok, kind="tokenizer.json", workers=workers)
    raise UserError(
        f"cannot tell what kind of tokenizer {path} is; name it *.json (Hugging Face "
        "tokenizer.json) or *.tiktoken (tiktoken BPE ranks)."
    )


def tokenizer_from_manifest(
    info: dict, data_dir: str | Path | None, workers: int | None = None
) -> Tokenizer:
    """The tokenizer a manifest's ``tokenizer`` entry describes, checked against its hash."""
    kind = info.get("kind")
    if kind == "bytes":
        return BytesTokenizer()
    if data_dir is None:
        raise UserError("the dataset's tokenizer is a file; pass the data directory to load it.")
    path = checked_tokenizer_file(Path(data_dir), info)
    if kind == "tiktoken":
        return TiktokenTokenizer(path, workers)
    if kind in ("bpe", "tokenizer.json"):
        tok = load_tokenizer_file(path, workers)
        tok.kind = kind
        if info.get("encoder") == "tiktoken" and isinstance(tok, HFTokenizer):
            tok.use_tiktoken()  # as prepare did, so ids match the shards'
        if tok.eot_id != info["eot_id"]:
            raise UserError(
                f"tokenizer {path} gives end-of-text id {tok.eot_id} but the manifest says "
                f"{info['eot_id']}; run `oneepoch prepare` again."
            )
        return tok
    raise UserError(f"unknown tokenizer kind {kind!r} in the manifest; run `oneepoch prepare`.")


def load_tokenizer(
    data, data_dir: str | Path | None = None, workers: int | None = None
) -> Tokenizer:
    """The tokenizer of a prepared dataset.

    ``data`` is a data directory, an opened ``Dataset``, or a manifest dict (then pass
    ``data_dir`` too unless the tokenizer is ``bytes``). The result has ``encode(str) ->
    list[int]``, ``decode(list[int]) -> str``, ``vocab_size`` and ``eot_id``.
    """
    if hasattr(data, "manifest") and hasattr(data, "path"):
        manifest, data_dir = data.manifest, data.path
    elif isinstance(data, dict):
        manifest = data
    else:
        from oneepoch.data.dataset import read_manifest

        data_dir = Path(data)
        manifest = read_manifest(data_dir)
    return tokenizer_from_manifest(manifest["tokenizer"], data_dir, workers)
