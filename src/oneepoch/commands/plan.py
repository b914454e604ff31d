"""`oneepoch plan`: a budget -> a run, by each published rule (oneepoch.plan); argparse only at
import, the work loads lazily."""

from __future__ import annotations

import sys

from oneepoch.cliflags import (
    add_config_flags,
    add_option,
    add_output_flags,
    check_positive,
    print_json,
)
from oneepoch.errors import UserError
from oneepoch.plan.calibrate import MAX_CALIBRATION_S, MEASURE_SECONDS
from oneepoch.plan.rules import TOKENS_PER_PARAM
from oneepoch.units import format_count

RULE_HELP = (
    "komatsuzaki (default: one epoch, --tokens-per-param tokens per parameter), chinchilla "
    "(20 tokens per parameter), kaplan (N ~ C^0.73), data-constrained (Muennighoff et al. "
    "2023) or fitted:LAW.json (a law from `oneepoch scaling fit`)"
)


HELP = "choose model size, tokens, batch and LR for a budget, by each published rule"
DESCRIPTION = """\
Turn a budget (FLOPs, wall-clock or tokens) into a run: model size and tokens by the chosen
rule, the fastest near-equal shape on this machine (measured, cached), batch size, learning
rate and the predicted wall-clock, with every rule side by side. --out writes a config for
`oneepoch train --config` and its predictions; --check RUN_DIR compares them with the
finished run.
"""


def add_arguments(p) -> None:
    p.add_argument(
        "--budget", help="FLOPs (3e15, 3PFLOPs), wall-clock (20min, 8h) or tokens (50M tokens)"
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", metavar="DATA_DIR", help="dataset made by `oneepoch prepare`")
    src.add_argument(
        "--unique-tokens", metavar="U", help="plan for a corpus of U training tokens (e.g. 5M)"
    )
    p.add_argument(
        "--vocab-size", type=int, help="vocabulary with --unique-tokens (default: prepare's 4096)"
    )
    p.add_argument("--rule", default="komatsuzaki", help=f"the rule to follow: {RULE_HELP}")
    p.add_argument(
        "--law",
        metavar="LAW.json",
        help="also show the rule fitted:LAW.json; a data-constrained law adds the value of "
        "more unique data at this budget",
    )
    text = "komatsuzaki's tokens per parameter"
    add_option(p, "--tokens-per-param", TOKENS_PER_PARAM, text, metavar="R")
    add_config_flags(p, ["--seq-len", "--dtype", "--device", "--eval-tokens"])
    p.add_argument(
        "--fitted-params",
        choices=("non-embedding", "total"),
        default="non-embedding",
        help="which parameter count the fitted law's N is (default non-embedding, as "
        "`oneepoch scaling sweep-csv` and `oneepoch sweep` write)",
    )
    p.add_argument("--out", metavar="plan.toml", help="write the chosen plan (+ plan.json)")
    add_output_flags(p, "the plans")
    cal = p.add_argument_group("calibration")
    cal.add_argument(
        "--no-calibrate", action="store_true", help="measure nothing; use cached or estimated rates"
    )
    cal.add_argument("--recalibrate", action="store_true", help="ignore cached measurements")
    text = f"timed seconds per measured shape (all together at most {MAX_CALIBRATION_S:g})"
    add_option(cal, "--calibration-seconds", MEASURE_SECONDS, text)
    chk = p.add_argument_group("after a run")
    chk.add_argument("--check", metavar="RUN_DIR", help="compare a run with its plan")
    chk.add_argument("--plan", metavar="FILE", help="the plan.json (default RUN_DIR/plan.json)")


def make_calibration(args):
    from oneepoch.plan.calibrate import Calibration

    check_positive(calibration_seconds=args.calibration_seconds)
    return Calibration(
        args.device,
        args.dtype,
        measure=not args.no_calibrate,
        recalibrate=args.recalibrate,
        seconds=args.calibration_seconds,
    )


def run(args) -> int:
    if args.check:
        return run_check(args)
    from oneepoch.plan.budget import parse_budget
    from oneepoch.plan.planfile import write_plan
    from oneepoch.plan.planner import Corpus, Planner, Settings, corpus_of_dataset
    from oneepoch.plan.rules import PUBLISHED, make_rule
    from oneepoch.units import parse_count

    if not args.budget:
        raise UserError("give a budget: --budget 3e15 (FLOPs), 20min or '50M tokens'.")
    budget = parse_budget(args.budget)
    if args.data:
        corpus = corpus_of_dataset(args.data)
        if args.vocab_size and args.vocab_size != corpus.vocab_size:
            raise UserError(
                f"--vocab-size {args.vocab_size} differs from {args.data}'s tokenizer "
                f"({corpus.vocab_size}); drop --vocab-size."
            )
    elif args.unique_tokens:
        from oneepoch.data.defaults import DEFAULT_VOCAB_SIZE

        corpus = Corpus(
            parse_count(args.unique_tokens, "token count"), args.vocab_size or DEFAULT_VOCAB_SIZE
        )
    else:
        raise UserError("say what data the plan is for: --data DATA_DIR or --unique-tokens U.")
    check_positive(
        seq_len=args.seq_len,
        eval_tokens=args.eval_tokens,
        tokens_per_param=args.tokens_per_param,
        vocab_size=args.vocab_size,
    )
    settings = Settings(
        seq_len=args.seq_len,
        tokens_per_param=args.tokens_per_param,
        eval_tokens=args.eval_tokens,
        fitted_count=args.fitted_params.replace("-", "_"),
    )
    specs = list(PUBLISHED)
    if args.law:
        specs.append(f"fitted:{args.law}")
    if args.rule not in specs:
        specs.append(args.rule)
    rules = [make_rule(s, settings.tokens_per_param, settings.fitted_count) for s in specs]
    chosen = rules[specs.index(args.rule)].name

    planner = Planner(corpus, settings, make_calibration(args))
    plans = planner.plan_all(rules, budget, chosen)
    if plans[chosen].problem:
        raise UserError(plans[chosen].problem)
    written = None
    if args.out:
        written = write_plan(args.out, plans, chosen, budget, corpus, settings, planner.calib)
    worth = None
    if args.law:
        from oneepoch.plan.value import value_of_data_for_plan

        worth = value_of_data_for_plan(
            rules[specs.index(f"fitted:{args.law}")], plans[chosen], planner
        )
    if args.json:
        return print_json(
            {
                "chosen": chosen,
                "budget": {"kind": budget.kind, "value": budget.value, "text": budget.text},
                "rules": {name: p.to_json() for name, p in plans.items()},
                "calibration": planner.calib.machine,
                "plan_file": str(written[0]) if written else None,
                "value_of_data": worth,
            }
        )
    print_plans(plans, chosen, budget, corpus, planner, written)
    if worth is not None:
        from oneepoch.plan.value import print_value_of_data

        print_value_of_data(worth, args.law)
    return 0


def _ratio_cell(p) -> str:
    """Achieved tokens per parameter, in the rule's count (non-embedding for kaplan)."""
    ratio = p.tokens_per_param
    if ratio is None:
        return "-"
    return f"{ratio:.3g}" + ("" if p.count == "total" else " (n-e)")


def print_plans(plans, chosen, budget, corpus, planner, written, out=None) -> None:
    from oneepoch.units import format_seconds

    out = out or sys.stdout
    T = planner.T
    print(
        f"budget {budget.describe()}; corpus {corpus.train_tokens:,} training tokens "
        f"({planner.ctx.unique_tokens:,.0f} usable at seq_len {T}), vocab {corpus.vocab_size:,}; "
        f"{planner.calib.device.type} {planner.calib.dtype}",
        file=out,
    )

    def cell(p, f):
        return "-" if p.problem else f(p)

    rows = [
        ("shape (layers x heads x d)", lambda p: p.candidate.label()),
        ("parameters, all", lambda p: format_count(p.candidate.total)),
        ("parameters, non-embedding", lambda p: format_count(p.candidate.non_embedding)),
        ("tokens", lambda p: format_count(p.tokens)),
        ("tokens per parameter", _ratio_cell),
        ("unique tokens", lambda p: format_count(p.unique_tokens)),
        ("epochs", lambda p: f"{p.epochs:.2f}"),
        ("steps", lambda p: f"{p.steps:,}"),
        ("batch (sequences)", lambda p: str(p.batch_size)),
        ("learning rate", lambda p: f"{p.lr:.2g}"),
        ("training FLOPs", lambda p: f"{p.flops:.3g}"),
        ("predicted loss", lambda p: f"{p.pred_loss:.3f}" if p.pred_loss is not None else "-"),
        ("est. training time", lambda p: format_seconds(p.estimate.train_s)),
        ("est. elapsed (+ eval, ckpt)", lambda p: format_seconds(p.estimate.elapsed_s)),
        ("tokens/s", lambda p: f"{p.estimate.tokens_per_s:,.0f}"),
    ]
    names = list(plans)
    heads = [
        ("*" if n == chosen else "") + (n if not n.startswith("fitted:") else "fitted")
        for n in names
    ]
    width = max(12, *(len(h) + 1 for h in heads))
    label_w = max(len(r[0]) for r in rows) + 1
    print("".ljust(label_w) + "".join(h.rjust(width) for h in heads), file=out)
    for label, f in rows:
        print(
            label.ljust(label_w) + "".join(cell(plans[n], f).rjust(width) for n in names), file=out
        )
    print(f"* chosen: {chosen}", file=out)
    for n in names:
        p = plans[n]
        lines = [f"impossible: {p.problem}"] if p.problem else list(p.notes)
        if not p.problem and p.estimate.source != "measured":
            lines.append(f"throughput {p.estimate.source}: not measured at this shape and batch")
        print(f"  {n}: {p.source}" + "".join(f"\n      - {x}" for x in lines), file=out)
    if plans[chosen].estimate.busy:
        print(
            "warning: this throughput was measured while other work loaded the machine, which "
            "can slow it several-fold; plan again when it is quiet (busy measurements are "
            "then retaken) for a truer time estimate.",
            file=out,
        )
    if written:
        toml, side = written
        print(f"written: {toml} (predictions in {side})", file=out)
        print(
            f"run it:  oneepoch train --data {corpus.path or 'DATA_DIR'} --config {toml} --out RUN_DIR",
            file=out,
        )
    else:
        print("write it with --out plan.toml, then `oneepoch train --config plan.toml`.", file=out)


def check_seconds(s: float) -> str:
    """Seconds, to a tenth, up to 10 minutes: a check compares runs of a few minutes, where
    minutes to one decimal (2.6 vs 2.5 min) hide a 6 s difference."""
    from oneepoch.units import format_seconds

    return f"{s:.1f} s" if s < 600 else format_seconds(s)


def run_check(args) -> int:
    from oneepoch.plan.check import check_run

    check_positive(calibration_seconds=args.calibration_seconds)
    result = check_run(
        args.check,
        args.plan,
        measure=not args.no_calibrate,
        recalibrate=args.recalibrate,
        seconds=args.calibration_seconds,
    )
    if args.json:
        return print_json(result)
    print(
        f"run {result['run']} ({result['status']}, {result['steps']:,} steps) against "
        f"{result['predictions']}" + (f", rule {result['rule']}" if result["rule"] else "")
    )

    def row(label, c, fmt):
        pred = fmt(c["predicted"]) if c.get("predicted") is not None else "-"
        act = fmt(c["actual"]) if c.get("actual") is not None else "-"
        ratio = f"{c['ratio']:.2f}" if c.get("ratio") is not None else "-"
        print(f"  {label:<22}{pred:>12}{act:>12}{ratio:>10}")

    print(f"  {'':<22}{'predicted':>12}{'actual':>12}{'ratio':>10}")
    row("training wall-clock", result["train_s"], check_seconds)
    row("elapsed", result["elapsed_s"], check_seconds)
    row("tokens/s", result["tokens_per_s"], lambda x: f"{x:,.0f}")
    row("evaluations", result["evaluations"], lambda x: f"{x:,}")
    row("val loss", result["val_loss"], lambda x: f"{x:.4f}")
    for note in result["notes"]:
        print(f"  note: {note}")
    return 0
