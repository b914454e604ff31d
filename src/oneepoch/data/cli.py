"""Subcommands ``prepare`` and ``data inspect``."""

from __future__ import annotations

import argparse
import json
import os
import sys

SIGPIPE_EXIT = 141  # what a shell reports for a command stopped by a closed pipe


def register(subparsers) -> None:
    from oneepoch.data.defaults import (
        DEFAULT_MAX_DOC_CHARS,
        DEFAULT_SAMPLE_CHARS,
        DEFAULT_SHARD_TOKENS,
        DEFAULT_VAL_FRACTION,
        DEFAULT_VOCAB_SIZE,
    )

    p = subparsers.add_parser(
        "prepare",
        help="turn text corpora into token shards",
        description="Read text sources, train or load a tokenizer, split documents into "
        "train and validation, and write token shards plus a manifest to DATA_DIR.",
    )
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
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=run_prepare)

    d = subparsers.add_parser("data", help="look at prepared datasets")
    dsub = d.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    i = dsub.add_parser("inspect", help="documents, tokens and sources of a dataset")
    i.add_argument("data_dir", metavar="DATA_DIR")
    i.add_argument("--verify", action="store_true", help="also re-hash every shard")
    i.add_argument("--json", action="store_true", help="print as JSON")
    i.set_defaults(func=run_inspect)
    d.set_defaults(func=lambda args: d.print_help() or 2)


def emit(text: str) -> int:
    """Print ``text`` to stdout; 0, or SIGPIPE_EXIT without a word when the reader has gone
    (`oneepoch data inspect DIR | head -1`), as a shell tool stopped by SIGPIPE would."""
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would complain again when it flushes stdout at exit: point it at nothing.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return SIGPIPE_EXIT
    return 0


def _say(message: str) -> None:
    print(f"prepare: {message}", file=sys.stderr, flush=True)


def run_prepare(args) -> int:
    from oneepoch.data.inspect import format_summary, summarize
    from oneepoch.data.prepare import prepare

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
        tokenizer_sample_chars=int(args.tokenizer_sample_mb * 2**20),
        progress=None if args.quiet else _say,
    )
    if args.json:
        return emit(json.dumps(manifest, indent=2))
    summary = format_summary(summarize(args.out))
    return emit(f"{summary}\nprepared in {manifest['prepare']['wall_s']:.1f} s")


def run_inspect(args) -> int:
    from oneepoch.data.inspect import format_summary, summarize

    summary = summarize(args.data_dir, verify=args.verify)
    return emit(json.dumps(summary, indent=2) if args.json else format_summary(summary))
