"""`oneepoch data inspect`: what a prepared dataset holds (oneepoch.data.inspect)."""

from __future__ import annotations

from oneepoch.cliflags import add_output_flags, emit, needs_subcommand, print_json

HELP = "look at prepared datasets"
DESCRIPTION = None


def add_arguments(d) -> None:
    dsub = d.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    i = dsub.add_parser("inspect", help="documents, tokens and sources of a dataset")
    i.add_argument("data_dir", metavar="DATA_DIR")
    i.add_argument("--verify", action="store_true", help="also re-hash every shard")
    add_output_flags(i, "the summary")
    i.set_defaults(func=run_inspect)
    needs_subcommand(d)


def run_inspect(args) -> int:
    from oneepoch.data.inspect import format_summary, summarize

    summary = summarize(args.data_dir, verify=args.verify)
    return print_json(summary) if args.json else emit(format_summary(summary))
