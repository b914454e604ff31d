"""`oneepoch demo`: the paper's comparison in miniature, on the built-in corpus.

Prepares the built-in corpus, trains the same small GPT twice on the same number of
tokens (once over fresh data, once repeating a tenth of it ten times), then fits the
learning curve, compares the runs by wall-clock to the same loss, and samples text.
"""

from __future__ import annotations

import json
from pathlib import Path

from oneepoch.errors import UserError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="one epoch vs ten epochs on the built-in corpus, end to end (~6 min on 2 CPU cores)",
        description="Prepare the built-in corpus, train a ~0.4M-parameter GPT for one epoch and "
        "for ten epochs on a tenth of the data (same tokens processed), fit the learning curve, "
        "compare wall-clock to the same validation loss, and sample text.",
    )
    p.add_argument("--data", default="data/builtin", help="where the built-in corpus is prepared")
    p.add_argument("--out", default="demo", help="directory for the runs and plots")
    p.add_argument("--tokens", default="2M", help="tokens each run processes (default 2M)")
    p.add_argument("--epochs", type=float, default=10, help="epochs of the baseline (default 10)")
    p.set_defaults(func=run_demo)


def _cli(*args: str) -> int:
    from oneepoch.cli import main

    code = main(list(args))
    if code:
        raise UserError(
            f"the demo step `oneepoch {' '.join(args)}` failed (exit {code}); see above."
        )
    return code


def _train(data: str, run: Path, tokens: str, *extra: str) -> None:
    info = run / "run.json"
    if info.is_file() and json.loads(info.read_text()).get("status") == "completed":
        print(f"== {run} is already complete; delete it to train again")
        return
    resume = ["--resume"] if (run / "config.toml").exists() else []
    shape = ["--n-layer", "2", "--n-head", "2", "--d-model", "128", "--seq-len", "128"]
    # Constant LR after warm-up, as in the paper: the test loss then follows a power law.
    optim = ["--batch-size", "16", "--lr", "2e-3", "--schedule", "constant", "--warmup-steps", "50"]
    _cli(
        "train",
        "--data",
        data,
        "--out",
        str(run),
        "--tokens",
        tokens,
        *shape,
        *optim,
        *extra,
        *resume,
    )


def run_demo(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not (Path(args.data) / "manifest.json").is_file():
        print(f"== preparing the built-in corpus into {args.data}")
        _cli("prepare", "--source", "builtin", "--out", args.data)
    _cli("data", "inspect", args.data)
    one, many = out / "one-epoch", out / f"{args.epochs:g}-epochs"
    print(f"\n== training for one epoch over fresh data ({args.tokens} tokens)")
    _train(args.data, one, args.tokens)
    print(
        f"\n== training for {args.epochs:g} epochs over 1/{args.epochs:g} of the data (same tokens)"
    )
    _train(args.data, many, args.tokens, "--epochs", f"{args.epochs:g}")
    final_tokens = json.loads((one / "run.json").read_text())["final"]["tokens"]
    print(
        "\n== the one-epoch run's future from its first 30%: learning-curve fits, and the "
        "final validation loss they forecast next to the one observed"
    )
    fit_args = ["--use-first", "0.3", "--predict-at", str(final_tokens)]
    try:
        _cli("fit", str(one), *fit_args, "--plot", str(out / "fit.png"))
    except UserError:
        print("== (too few evaluations in the first 30% for that; fitting the whole run)")
        _cli("fit", str(one), "--plot", str(out / "fit.png"))
    print(
        f"\n== wall-clock to the same validation loss: {args.epochs:g} epochs (A) vs one epoch (B)"
    )
    _cli("compare", str(many), str(one))
    print("\n== a sample from the one-epoch model")
    _cli("sample", str(one), "--prompt", "The king", "--max-new-tokens", "60")
    print(f"\nruns, metrics and plots are in {out}/")
    return 0
