"""`oneepoch sample`: text from a run's latest checkpoint (oneepoch.sample)."""

from __future__ import annotations

import inspect

from oneepoch.cliflags import add_option
from oneepoch.sample import sample_text

HELP = "generate text from a run's latest checkpoint"
DESCRIPTION = """\
Continue --prompt with the model of RUN_DIR's latest checkpoint, decoding with the run's
tokenizer; generation stops at the end-of-text token unless --past-eot.
"""
DEFAULTS = {k: v.default for k, v in inspect.signature(sample_text).parameters.items()}


def add_arguments(s) -> None:
    s.add_argument("run_dir", metavar="RUN_DIR", help="a run directory made by `oneepoch train`")
    s.add_argument("--prompt", default="", help="text to continue (default: empty)")
    add_option(s, "--max-new-tokens", DEFAULTS["max_new_tokens"], "tokens to generate at most")
    add_option(s, "--temperature", DEFAULTS["temperature"], "0 for greedy decoding")
    add_option(s, "--top-k", DEFAULTS["top_k"], "sample among the k likeliest tokens")
    add_option(s, "--seed", DEFAULTS["seed"], "seed of the sampling")
    s.add_argument("--data", help="dataset directory, if it moved since training")
    s.add_argument(
        "--past-eot",
        action="store_true",
        help="keep generating past the end-of-text token (default: stop there)",
    )


def run(args) -> int:
    print(
        sample_text(
            args.run_dir,
            args.prompt,
            args.max_new_tokens,
            args.temperature,
            args.top_k,
            args.seed,
            args.data,
            past_eot=args.past_eot,
        )
    )
    return 0
