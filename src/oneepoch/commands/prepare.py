"""`oneepoch prepare`: text sources -> tokenizer -> token shards (oneepoch.data.prepare)."""

from __future__ import annotations

import argparse
import math
import sys

from oneepoch.cliflags import add_output_flags, emit, print_json
from oneepoch.data.defaults import (
    DEFAULT_MAX_DOC_CHARS,
    DEFAULT_SAMPLE_CHARS,
    DEFAULT_SHARD_TOKENS,
    DEFAULT_VAL_FRACTION,
    DEFAULT_VOCAB_SIZE,
)

HELP = "turn text corpora into token shards"
DESCRIPTION = """\
Read text sources, train or load a tokenizer, split documents into train and validation, and
write token shards plus a manifest to DATA_DIR.
"""


def add_arguments(p) -> None:
    p.add_argument(
        "--source",
        action="append",
        required=True,
        metavar="PATH",
        help="a .txt/.md file or folder, .jsonl[.gz|.zst], .parquet, a folder saved with "
        "datasets' save_to_disk, hf:NAME[:CONFIG], or builtin[:shakespeare,milton,bible,"
        "python]; repeat to mix sources",
    )
    p.add_argument("--out", required=True, metavar="DATA_DIR", help="dataset directory to write")
    p.add_argument(
        "--tokenizer",
        default="bpe",
        metavar="bpe|bytes|FILE",
        help="bpe (train a byte-level BPE, default), bytes, a tokenizer.json or a .tiktoken file",
    )
    p.add_argument(
        "--vocab-size",
        type=int,
        default=DEFAULT_VOCAB_SIZE,
        help=f"vocabulary of the trained BPE (default {DEFAULT_VOCAB_SIZE})",
    )
    p.add_argument("--text-field", default="text", help="JSONL field / column holding the text")
    split = p.add_mutually_exclusive_group()
    split.add_argument(
        "--val-fraction",
        type=float,
        help=f"fraction of documents held out for validation (default {DEFAULT_VAL_FRACTION})",
    )
    split.add_argument("--val-documents", type=int, help="exact number of validation documents")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/validation split")
    p.add_argument("--workers", type=int, help="tokenizer threads (default: all cores)")
    p.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS, help=argparse.SUPPRESS)
    p.add_argument(
        "--max-doc-chars",
        type=int,
        default=DEFAULT_MAX_DOC_CHARS,
        help="documents longer than this are cut into pieces of at most this many characters",
    )
    p.add_argument(
        "--tokenizer-sample-mb",
        type=float,
        default=DEFAULT_SAMPLE_CHARS / 2**20,
        help="at most this many MiB of text train the BPE (default %(default)g)",
    )
    add_output_flags(p, "the manifest", progress="progress lines on stderr")


def _say(message: str) -> None:
    print(f"prepare: {message}", file=sys.stderr, flush=True)


def run(args) -> int:
    from oneepoch.data.inspect import format_summary, summarize
    from oneepoch.data.prepare import prepare
    from oneepoch.errors import UserError

    sample_mb = args.tokenizer_sample_mb
    if not math.isfinite(sample_mb) or sample_mb <= 0:
        raise UserError(
            f"--tokenizer-sample-mb must be a positive number of MiB, not {sample_mb:g}; "
            f"the default is {DEFAULT_SAMPLE_CHARS / 2**20:g}."
        )

    manifest = prepare(
        args.source,
        args.out,
        tokenizer=args.tokenizer,
        vocab_size=args.vocab_size,
        text_field=args.text_field,
        val_fraction=args.val_fraction,
        val_documents=args.val_documents,
        seed=args.seed,
        workers=args.workers,
        shard_tokens=args.shard_tokens,
        max_doc_chars=args.max_doc_chars,
        tokenizer_sample_chars=int(sample_mb * 2**20),
        progress=None if args.quiet else _say,
    )
    if args.json:
        return print_json(manifest)
    summary = format_summary(summarize(args.out))
    return emit(f"{summary}\nprepared in {manifest['prepare']['wall_s']:.1f} s")
