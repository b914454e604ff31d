"""`oneepoch plan --law LAW.json` with a data-constrained law: what more unique data is worth
beside the plan (the numbers: oneepoch.analysis.value_of_data).

The plan being made is the reference: the law's loss for it, and for the law's best run at
the same budget on the corpus as it is, on 2, 4 and 10 times as many unique tokens and on
unlimited data; the compute at which each reaches the plan's loss; and how many epochs the
corpus affords the plan's model before repetition costs 1% and 5% of loss. The law's N is
the count it was fitted on (``--fitted-params``), and FLOPs per token are the real ones of
the planner's shape ladder, output head included.
"""

from __future__ import annotations

import sys

from oneepoch.units import format_count


def value_of_data_for_plan(rule, plan, planner) -> dict | None:
    """The value-of-data table for ``plan`` under ``rule``'s law (a plan.rules.Fitted), or
    None when the law is not data-constrained (a Chinchilla law has no repetition term)."""
    from oneepoch.analysis.value_of_data import epochs_affordable, value_of_data
    from oneepoch.plan.shapes import smallest

    law, kind = rule.law, rule.count
    if law.form != "data-constrained":
        return None
    unique = planner.ctx.unique_tokens
    reference = {
        "params": plan.candidate.count(kind),
        "tokens": plan.tokens,
        "unique_tokens": plan.unique_tokens,
        "flops": plan.flops,
    }
    table = value_of_data(
        law,
        plan.budget_flops,
        unique,
        lambda n: planner.curve(n, kind),
        smallest(planner.T, planner.V).count(kind),
        reference,
    )
    table["rule"], table["count"] = plan.rule, kind
    table["epochs_affordable"] = epochs_affordable(law, reference["params"], unique)
    return table


def _sci(x: float) -> str:
    return f"{x:.3g}".replace("e+", "e")


def _with_interval(est: dict | None, fmt) -> str:
    if est is None or est.get("value") is None:
        return "not reached" if est is not None else "-"
    value = fmt(est["value"])
    if est["ci_low"] is None and est["ci_high"] is None:
        return value
    low = fmt(est["ci_low"]) if est["ci_low"] is not None else "?"
    high = fmt(est["ci_high"]) if est["ci_high"] is not None else "inf"
    return f"{value} [{low}, {high}]"


def print_value_of_data(table: dict, law_path: str, out=None) -> None:
    out = out or sys.stdout
    ref = table["reference"]
    count = table["count"].replace("_", "-")
    boot = table["n_bootstrap"]
    intervals = (
        f"{table['level']:.0%} intervals from its {boot} bootstrap replicates"
        if boot
        else "no intervals: the law file holds no bootstrap replicates (fit with --bootstrap)"
    )
    loss = _with_interval(ref["loss"], lambda x: f"{x:.3f}")
    print(f"\nvalue of more unique data under {law_path} ({intervals}):", file=out)
    print(
        f"  the plan ({table['rule']}): {format_count(ref['params'])} {count} parameters, "
        f"{format_count(ref['tokens'])} tokens, {ref['epochs']:.2f} epochs of "
        f"{format_count(ref['unique_tokens'])} unique, {_sci(ref['flops'])} FLOPs; the law's loss {loss}",
        file=out,
    )
    print(
        f"  the law's best run at this budget ({_sci(table['budget_flops'])} FLOPs), and the "
        "FLOPs at which it reaches the plan's loss:",
        file=out,
    )
    head = (
        f"    {'unique tokens':<20}{'params':>9}{'tokens':>9}{'epochs':>8}  "
        f"{'loss':<24}{'FLOPs to the plan loss':<34}{'x plan'}"
    )
    print(head, file=out)
    for row in table["rows"]:
        label = "unlimited" if row["multiple"] is None else format_count(row["unique_tokens"])
        label += "" if row["multiple"] in (None,) else f" ({row['data']})"
        if not row["identified"]:
            print(f"    {label:<20}{row['note']}", file=out)
            continue
        epochs = f"{row['epochs']['value']:.2f}" if row["epochs"] else "1.00"
        print(
            f"    {label:<20}{format_count(row['params']['value']):>9}"
            f"{format_count(row['tokens']['value']):>9}{epochs:>8}  "
            f"{_with_interval(row['loss'], lambda x: f'{x:.3f}'):<24}"
            f"{_with_interval(row['flops_for_reference_loss'], _sci):<34}"
            f"{_with_interval(row['flops_ratio'], lambda x: f'{x:.2f}')}",
            file=out,
        )
    afford = table["epochs_affordable"]
    parts = []
    for row in afford["penalties"]:
        if row["epochs"] is None:
            parts.append(f"{row['penalty']:.0%}: {row['note']}")
        else:
            epochs = _with_interval(row["epochs"], lambda x: f"{x:.3g}")
            parts.append(f"{row['penalty']:.0%} worse after {epochs}")
    print(
        f"  epochs this corpus affords the plan's model (loss against the same tokens all "
        f"fresh): {'; '.join(parts)}",
        file=out,
    )
    if "R_N_star" in table["not_identified"]:
        print(
            "  note: the law's R_N* ended at a bound (not identified): its cost of excess "
            "parameters is a guess",
            file=out,
        )
    print(
        "  a law fitted at one scale extrapolates poorly to budgets far beyond its runs",
        file=out,
    )
