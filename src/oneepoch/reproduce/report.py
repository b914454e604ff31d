"""report.html (one self-contained file, figures embedded as PNG data) and report.md.

Both are rendered from one list of blocks, so they say the same thing.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from oneepoch.analysis.compare import RATE_TOLERANCE
from oneepoch.atomic import write_atomic
from oneepoch.plan.planner import RATIO_TOLERANCE
from oneepoch.reproduce import law_prediction, plots
from oneepoch.reproduce.jobdir import JobDir
from oneepoch.reproduce.results import JobRuns
from oneepoch.reproduce.verdicts import (
    FORECAST_FRACTION,
    HOLDS_WITHIN,
    INTERVAL,
    UNDECIDED,
    Claim,
    ratio_miss,
    speedup_range,
)

PAPER_REF = "Komatsuzaki, One Epoch Is All You Need, arXiv:1906.06669 (2019)"


def write_report(folder: JobDir, results: dict, job: dict, runs: JobRuns) -> dict[str, Path]:
    """The report of ``results``; its figures draw seed 0's ``runs`` (as results read them)."""
    figures = _figures(folder, results, job, runs)
    blocks = _blocks(results, job, figures)
    md, page = folder.report_md, folder.report_html
    write_atomic(md, _markdown(blocks, folder.path).encode())
    write_atomic(page, _html(blocks).encode())
    return {"html": page, "md": md}


def _figures(folder: JobDir, results: dict, job: dict, runs: JobRuns) -> dict[str, Path]:
    fig_dir = folder.figures
    fig_dir.mkdir(exist_ok=True)
    exps, plan = results["experiments"], job["plan"]

    def load(key: str):
        return runs[(0, key)]

    figs = {
        "exp1": plots.exp1_curves(load, exps["exp1"], 0, fig_dir / "exp1_curves.png"),
        "exp2": plots.exp2_curves(load, plan["exp2"], 0, fig_dir / "exp2_dropout.png"),
        "exp4": plots.exp4_time_to_loss(load, exps["exp4"], 0, fig_dir / "exp4_time_to_loss.png"),
        "speedups": plots.speedups(results["claims"], exps["exp1"], fig_dir / "speedups.png"),
    }
    long_run = load((plan["exp3"]["power_law"] or [plan["exp2"]["0"]])[0])
    try:
        figs["exp3"] = plots.exp3_fit(long_run, fig_dir / "exp3_power_law.png", FORECAST_FRACTION)
    except Exception as exc:  # noqa: BLE001 - a figure that cannot be drawn is said, not fatal
        figs["exp3_error"] = str(exc)
    return figs


# ---------------------------------------------------------------------------------------
# What the report says


def _blocks(results: dict, job: dict, figs: dict) -> list[tuple]:
    preset, exps, claims = results["preset"], results["experiments"], results["claims"]
    machine = results["machine"]
    hw = machine.get("hardware") or {}
    peak = machine.get("peak_flops") or {}
    seeds = results["seeds"]
    b: list[tuple] = [
        ("h1", "One Epoch Is All You Need, reproduced on this corpus and machine"),
        (
            "p",
            f"The experiments of {PAPER_REF}, run by `oneepoch reproduce --preset {preset['name']}` "
            f"on {results['data']['path']} ({results['data']['train_tokens']:,} training tokens, "
            f"vocabulary {results['data']['vocab_size']:,}), {seeds} seed{'s' if seeds > 1 else ''}, on "
            f"{_hardware(hw)} ({machine.get('dtype')}, matmul peak "
            f"{(peak.get('value') or 0) / 1e9:,.0f} GFLOP/s, {peak.get('source', 'unknown source')}).",
        ),
        ("h2", "The paper's claims against our measurements"),
        (
            "table",
            ["exp", "claim", "paper", "ours", "ours, in steps", "verdict"],
            [_claim_row(c) for c in claims],
        ),
        ("img", figs["speedups"], "Wall-clock speedups: our seeds against the paper's ranges."),
        ("h3", "How each verdict is decided"),
        ("list", _rules(claims)),
        *_setup_blocks(results),
    ]
    step_cost = _dropout_cost(exps["exp2"])
    b += _exp1_blocks(exps["exp1"], figs, step_cost)
    b += law_prediction.blocks(results.get("law"), exps["exp1"])
    b += _exp2_blocks(exps["exp2"], figs, step_cost)
    b += _exp3_blocks(exps["exp3"], figs)
    b += _exp4_blocks(exps["exp4"], figs, preset)
    b += _exp5_blocks(exps["exp5"], step_cost)
    notes = _throughput_notes(exps)
    b += [
        ("h2", "Throughput checks"),
        (
            "list",
            notes
            or [
                f"Every compared run kept within {RATE_TOLERANCE:.0%} of its median throughput, and runs of the same configuration agreed: the wall-clock comparisons were not bent by load."
            ],
        ),
    ]
    b += [
        (
            "p",
            "Every number here is in results.json, with per-seed values and the run directory each comes from.",
        )
    ]
    return b


def _setup_blocks(results: dict) -> list[tuple]:
    """The preset, how the runs were scheduled, and a row for each run."""
    preset, sched = results["preset"], results["schedule"]
    return [
        ("h2", "Setup"),
        (
            "p",
            f"Preset **{preset['name']}** ({preset['purpose']}): the baseline GPT has "
            f"{preset['n_layer']} layers, {preset['n_head']} heads, d_model {preset['d_model']}, "
            f"context {preset['seq_len']}, batch {preset['batch_size']} sequences; experiment 1's "
            f"runs take {preset['steps']} steps ({preset['steps'] * preset['batch_size'] * preset['seq_len']:,} "
            f"tokens). Why this size: {preset['why']}. Every run uses AdamW at a constant learning "
            f"rate {preset['lr']:g} after {preset['warmup_steps']} warm-up steps (the paper's "
            "setting, under which the test loss follows a power law), and is evaluated on the same "
            f"{preset['eval_tokens']:,} validation tokens.",
        ),
        (
            "p",
            "Wall-clock is training time only (evaluation, checkpoints and an untimed warm-up step "
            "excluded). "
            + (
                f"The runs of each seed trained interleaved, round robin in {sched['segments']} "
                "segments each (every run resuming exactly where it stopped), so load elsewhere on "
                "the machine fell on all of them alike."
                if sched["interleaved"]
                else "The runs trained one after another (--sequential): load on the machine can "
                "have favoured some of them."
            )
            + " Each comparison checks every run's throughput against its own quiet speed and "
            "says so below when load may have bent it. Runs that agree with a longer run in "
            "everything but their length are read from its first steps (the learning rate is "
            "constant after the warm-up, so the shorter run would compute exactly those).",
        ),
        (
            "table",
            [
                "run",
                "model",
                "params (non-emb.)",
                "epochs",
                "dropout",
                "tokens",
                "unique",
                "best val",
                "final val",
                "tokens/s",
                "wall",
            ],
            _run_rows(results),
        ),
    ]


def _dropout_cost(exp2: dict) -> str:
    """'dropout 0.1 costs 27% per step here' for each rate measured, or ''."""
    parts = []
    for p, s in exp2["summary"].items():
        cost = s.get("throughput_cost_per_step") or {}
        if cost.get("n"):
            parts.append(f"dropout {p} costs {_compact(cost, '{:.0%}')} per step")
    return "; ".join(parts)


def _gpu_remark(step_cost: str) -> str:
    if not step_cost:
        return ""
    return (
        f" On this machine {step_cost} (experiment 2), so a wall-clock speedup against a "
        "dropout baseline includes that cost; the paper measured on GPUs, where dropout's "
        "per-step cost is small. The step speedup beside it is free of it."
    )


def _exp1_blocks(exp1: list[dict], figs: dict, step_cost: str = "") -> list[tuple]:
    rows = []
    for x in exp1:
        for r in x["per_seed"]:
            seed = x["per_seed"].index(r)
            c = r["curves"]
            for role in ("repeated", "regularized"):
                vs = r["vs_" + role]
                rows.append(
                    [
                        f"{seed}",
                        f"{x['epochs']:g} epochs" + (" + dropout" if role == "regularized" else ""),
                        f"{c[role]['best_loss']:.4f} at step {c[role]['best_step']}",
                        f"step {c[role]['turns_up_at_step']} (+{c[role]['rise_after_best']:.1%} by the end)"
                        if c[role]["turns_up"]
                        else "no",
                        f"{c['one_epoch']['final_loss']:.4f}",
                        _x(vs["step_speedup"]),
                        _x(vs["wall_clock_speedup"]),
                        _x(vs["wall_clock_speedup_at_median_throughput"]),
                    ]
                )
    summary = []
    for x in exp1:
        for vs, label in (("vs_repeated", "E epochs"), ("vs_regularized", "E epochs + dropout")):
            s = x["summary"][vs]
            summary.append(
                [
                    f"{x['epochs']:g}",
                    label,
                    _spread(s["step_speedup"]),
                    _spread(s["wall_clock_speedup"]),
                ]
            )
    return [
        ("h2", "Experiment 1: one epoch against many"),
        (
            "p",
            "Same model, same iterations: (a) one epoch over T unique tokens; (b) E epochs over T/E tokens, dropout 0; (c) the same with dropout, the regularised multi-epoch practice the paper replaces. Speedup: the cost of (b) or (c) to reach its best validation loss over the cost of (a) to reach the same loss."
            + _gpu_remark(step_cost),
        ),
        (
            "img",
            figs["exp1"],
            "Training (dashed) and validation loss; circles mark the multi-epoch runs' best losses.",
        ),
        (
            "table",
            [
                "seed",
                "baseline",
                "its best val loss",
                "overfits from",
                "(a) final",
                "step speedup",
                "wall-clock speedup",
                "at median throughput",
            ],
            rows,
        ),
        ("table", ["E", "against", "step speedup", "wall-clock speedup"], summary),
    ]


def _exp2_blocks(exp2: dict, figs: dict, step_cost: str = "") -> list[tuple]:
    rows = []
    for p, s in exp2["summary"].items():
        rows.append(
            [
                p,
                _spread(s["gap"], "{:+.4f}"),
                _spread(s["step_speedup"]),
                _spread(s["wall_clock_speedup"]),
                _spread(s.get("throughput_cost_per_step") or {}, "{:.0%}"),
            ]
        )
    bounds = []
    for seed, r in enumerate(exp2["per_seed"]):
        for p, d in r["dropout"].items():
            lb = (d["slowdown"].get("bound") or {}).get("step_speedup")
            if lb and d["slowdown"].get(
                "bound_only"
            ):  # far extrapolations: the bound is what holds
                bounds.append(
                    f"seed {seed}, dropout {p}: never reached dropout 0's final loss within "
                    f"its run, so the slowdown is at least {lb:.2f}x in steps (the table's value "
                    "is extrapolated with a power-law fit)."
                )
    return [
        ("h2", "Experiment 2: regularisation under one epoch"),
        (
            "p",
            "One epoch each at dropout 0, and the dropout rates below. Loss gap: final validation loss minus dropout 0's. Slowdown: the cost of the dropout run to reach dropout 0's final loss over dropout 0's cost. Cost per step: 1 - the dropout run's median tokens/s over dropout 0's (the runs trained interleaved, so load fell on both): what dropout itself costs a step on this machine, apart from what it does to the loss."
            + (
                f" Here {step_cost}; the paper measured on GPUs, where dropout's per-step cost "
                "is small, so the slowdown in steps is the one to compare with it."
                if step_cost
                else ""
            ),
        ),
        ("img", figs["exp2"], "Validation (solid) and training (dashed) loss by dropout rate."),
        (
            "table",
            ["dropout", "loss gap", "slowdown (steps)", "slowdown (wall-clock)", "cost per step"],
            rows,
        ),
        *([("list", bounds)] if bounds else []),
    ]


def _exp3_blocks(exp3: dict, figs: dict) -> list[tuple]:
    rows = []
    for seed, runs in enumerate(exp3["per_seed"]):
        for key, r in runs.items():
            name = f"{key} ({r.get('steps', '?')} steps)" + (" (judged)" if r.get("judged") else "")
            if "error" in r:
                rows.append([str(seed), name, r["error"], "", "", ""])
                continue
            p = (r.get("forms", {}).get("power") or {}).get("params") or {}
            h = r.get("holds") or {}
            f = r.get("forecast") or {}
            width = (
                f" width {(f['ci_high'] - f['ci_low']) / f['value']:.1%}"
                if f.get("value") and f.get("ci_low") is not None and f.get("ci_high") is not None
                else ""
            )
            rows.append(
                [
                    str(seed),
                    name,
                    _params(p),
                    f"{h.get('decades', 0):.2f} of {h.get('fitted_decades', 0):.2f} (max residual {h.get('max_abs_residual', 0):.1%})"
                    if h
                    else "",
                    f"{f['value']:.4f} [{_n(f.get('ci_low'))}, {_n(f.get('ci_high'))}]{width}"
                    if f.get("value")
                    else f.get("error", ""),
                    f"{f['observed']:.4f} ({f['error']:+.2%}"
                    + (", inside" if f.get("covered") else ", outside")
                    + ")"
                    if f.get("observed") and f.get("error") is not None
                    else "",
                ]
            )
    long_runs = ", ".join(exp3.get("power_law") or []) or "none"
    fig = (
        [
            (
                "img",
                figs["exp3"],
                f"Experiment 3's run (seed 0): forms fitted to its first {FORECAST_FRACTION:.0%} (filled points), extended to its end.",
            )
        ]
        if "exp3" in figs
        else [("p", f"(figure not drawn: {figs.get('exp3_error')})")]
    )
    return [
        ("h2", "Experiment 3: the power law"),
        (
            "p",
            f"Experiment 3's own run ({long_runs}) is one epoch of the baseline model, long enough that the range fitted after the warm-up's effect (from twice the warm-up) spans the decades of tokens the claim is about; it is judged. The job's other one-epoch curves (experiments 1, 2 and 4) are fitted too, for the forecast and for comparison. Each is fitted with L = E + A t^-alpha (t = tokens) and the other forms of `oneepoch fit`, with {INTERVAL:.0%} bootstrap intervals; the power law holds over the widest stretch of evaluations within {HOLDS_WITHIN:.0%} of it. The forecast uses only the first {FORECAST_FRACTION:.0%} of each run; its interval width is relative to the forecast.",
        ),
        *fig,
        (
            "table",
            [
                "seed",
                "run",
                f"power law: E, A, alpha [{INTERVAL:.0%}]",
                "holds over (decades of tokens)",
                f"forecast of final loss [{INTERVAL:.0%}]",
                "observed (error)",
            ],
            rows,
        ),
    ]


def _rule_cells(r: dict) -> list[str]:
    """Shape, parameters, and the rule's tokens per parameter against the run's."""
    m = r["params"]
    asked = r.get("target_tokens_per_param")
    ratio = f"{r['tokens_per_param']:.2f}" + (f" (rule: {asked:g})" if asked else "")
    if r.get("data_limited"):
        ratio += " (data-limited)"
    if r.get("epochs", 1) > 1:
        ratio += f" ({r['epochs']:.2f} epochs)"
    return [
        Path(r["run"]).name.split("-")[1],
        f"{m['total']:,} ({m['non_embedding']:,}); rule {r['target_params']:,.0f}",
        ratio,
    ]


def _exp4_blocks(exp4: list[dict], figs: dict, preset: dict) -> list[tuple]:
    rows, misses = [], []
    for b in exp4:
        rows.append(
            [
                f"{b['fraction']:g}",
                "baseline",
                f"{preset['n_layer']}x{preset['n_head']}x{preset['d_model']}",
                "",
                "",
                f"{b['per_seed'][0]['baseline_final_loss']:.4f}",
                "1 (reference)",
                "",
                "",
            ]
        )
        for name, r in b["rules"].items():
            s = b["summary"][name]
            rows.append(
                [
                    f"{b['fraction']:g}",
                    name,
                    *_rule_cells(r),
                    "",
                    _spread(s["wall_clock_speedup"]),
                    _spread(s["step_speedup"]),
                    _spread(s["flop_speedup"]),
                ]
            )
            miss = ratio_miss(r)
            if miss:
                why = [n for n in r.get("notes") or [] if n.startswith("cannot keep")]
                misses.append(
                    f"{name} at {b['fraction']:g}x the compute: cannot decide: {miss}"
                    + (f"; the planner: {why[0]}" if why else "")
                    + "."
                )
    return [
        ("h2", "Experiment 4: size and iterations for the budget"),
        (
            "p",
            "At each compute budget (a fraction of experiment 1's), the baseline model trained one epoch for as many steps as the budget pays for, against the sizes the allocation rules choose at the same compute, one epoch each. Each rule's run is the one `oneepoch plan` makes for that compute (the shape and steps that keep a ratio rule's tokens per parameter, with the preset's batch and context; among shapes within "
            f"{RATIO_TOLERANCE - 1:.0%} of the ratio, the nearest to it), its steps rounded to the evaluation cadence; the table gives the rule's ratio beside the run's. The baseline is experiment 1's model: the size a practitioner would train for many epochs on this data; at one epoch it sees about one token per parameter, far from both rules' ratios, the situation the paper's adjustment addresses. Speedup: the baseline's wall-clock to its final loss over the rule's run's wall-clock to the same loss (below 1: the rule's run is slower, or never got there). The FLOP speedup beside it is what the rules optimise; where it exceeds the wall-clock speedup, the smaller model ran at a lower share of the machine's peak (small matmuls, the output head and per-step overheads weigh more).",
        ),
        (
            "img",
            figs["exp4"],
            "Validation loss against training wall-clock; dotted: the baseline's final loss.",
        ),
        (
            "table",
            [
                "budget",
                "rule",
                "shape",
                "params total (non-emb.)",
                "tokens/param",
                "baseline final",
                "wall-clock speedup",
                "step speedup",
                "FLOP speedup",
            ],
            rows,
        ),
        *([("list", misses)] if misses else []),
    ]


def _exp5_blocks(exp5: dict, step_cost: str = "") -> list[tuple]:
    rows = [
        [
            name,
            _rule_cells(exp5["rules"][name])[2],
            _spread(s["wall_clock_speedup"]),
            _spread(s["step_speedup"]),
            _spread(s["flop_speedup"]),
        ]
        for name, s in exp5["summary"].items()
    ]
    return [
        ("h2", "Experiment 5: both together"),
        (
            "p",
            f"The regularised {exp5['epochs']:g}-epoch run of experiment 1 against one epoch at each rule's size for the same compute: the cost of the former to reach its best loss over the latter's."
            + _gpu_remark(step_cost),
        ),
        (
            "table",
            ["size rule", "tokens/param", "wall-clock speedup", "step speedup", "FLOP speedup"],
            rows,
        ),
    ]


def _throughput_notes(exps: dict) -> list[str]:
    notes = []

    def add(c):
        for n in c.get("notes", []):
            if "throughput" in n and n not in notes:
                notes.append(n)

    for x in exps["exp1"]:
        for r in x["per_seed"]:
            add(r["vs_repeated"])
            add(r["vs_regularized"])
    for b in exps["exp4"]:
        for r in b["per_seed"]:
            for c in r["rules"].values():
                add(c)
    for s in exps["exp5"]["per_seed"]:
        for c in s.values():
            add(c)
    return notes


# ---------------------------------------------------------------------------------------
# Formatting


def claim_lines(claims: list[Claim]) -> list[str]:
    """The claims table as plain text lines, for the terminal."""
    lines = []
    for c in claims:
        exp, claim, paper, ours, steps, verdict = _claim_row(c)
        steps = f" ({_compact(c.steps)} in steps)" if steps else ""
        lines.append(
            f"[{verdict.strip('*'):>13}] exp {exp}: {claim} | paper {paper} | ours {ours}{steps}"
        )
    return lines


def _rules(claims: list[Claim]) -> list[str]:
    """Each distinct rule once, with the claims it decides and what qualified them."""
    by_rule: dict[str, list[Claim]] = {}
    for c in claims:
        by_rule.setdefault(c.rule, []).append(c)
    items = []
    for rule, cs in by_rule.items():
        exps = ", ".join(dict.fromkeys(str(c.experiment) for c in cs))
        several = "s" if "," in exps else ""
        names = (
            f"Experiment {exps}, {cs[0].claim}" if len(cs) == 1 else f"Experiment{several} {exps}"
        )
        why = sorted({w for c in cs for w in c.why})
        items.append(f"**{names}.** {rule}" + (f" Here: {'; '.join(why)}." if why else ""))
    return items


def _claim_row(c: Claim) -> list[str]:
    """exp, claim, paper, ours (a sentence, or the speedup's spread), ours in steps, verdict."""
    m = c.measured
    if c.ours:
        ours = c.ours
    elif isinstance(m, dict) and "values" in m:
        ours = _spread(m) + (" at median throughput" if c.basis == "median" else "")
    else:
        ours = str(m)
    if c.verdict == UNDECIDED and c.why and c.steps is not None:
        ours += f" ({c.why[0]})"  # a speedup that decides nothing says why beside it
    steps = _spread(c.steps) if c.steps else ""
    paper = speedup_range(c.paper) if c.paper else "(qualitative)"
    return [str(c.experiment), c.claim, paper, ours, steps, f"**{c.verdict}**"]


def _spread(s: dict, fmt: str = "{:.2f}x", over: str = "seeds") -> str:
    """median [min, max] over the seeds (or curves) that have a value."""
    if not s or s.get("n", 0) == 0:
        return "n/a"
    if s["n"] == 1:
        return fmt.format(s["median"]) + f" (one {over[:-1]})"
    return f"{fmt.format(s['median'])} [{fmt.format(s['min'])}, {fmt.format(s['max'])}] over {s['n']} {over}"


def _compact(s: dict, fmt: str = "{:.2f}x") -> str:
    """median [min, max] over seeds, or the one value; for sentences."""
    if not s or s.get("n", 0) == 0:
        return "n/a"
    if s["n"] == 1:
        return fmt.format(s["median"])
    return f"{fmt.format(s['median'])} [{fmt.format(s['min'])}, {fmt.format(s['max'])}]"


def _x(v) -> str:
    return "n/a" if v is None else f"{v:.2f}x"


def _n(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _params(p: dict) -> str:
    def one(name):
        e = p.get(name)
        if not isinstance(e, dict) or e.get("value") is None:
            return f"{name} n/a"
        lo, hi = e.get("ci_low"), e.get("ci_high")
        ci = f" [{lo:.3g}, {hi:.3g}]" if lo is not None and hi is not None else ""
        return f"{name} {e['value']:.3g}{ci}"

    return "; ".join(one(n) for n in ("E", "A", "alpha"))


def _hardware(hw: dict) -> str:
    parts = [str(hw.get(k)) for k in ("device_name", "cpu", "name") if hw.get(k)]
    cores = hw.get("threads") or hw.get("cpu_count")
    return (parts[0] if parts else "this machine") + (f", {cores} threads" if cores else "")


def _run_rows(results: dict) -> list[list[str]]:
    rows = []
    for name, r in results["runs"].items():
        if r.get("read_from"):
            name += f" (the first {r['steps']:,} steps of {r['read_from']})"
        m = r.get("model") or {}
        p = r.get("params") or {}
        prof = r.get("throughput") or {}
        rows.append(
            [
                name,
                f"{m.get('n_layer')}x{m.get('n_head')}x{m.get('d_model')}",
                f"{p.get('total', 0):,} ({p.get('non_embedding', 0):,})",
                f"{r.get('epochs', 1):g}",
                f"{m.get('dropout', 0):g}",
                f"{r['tokens']:,}",
                f"{r['unique_tokens']:,}",
                f"{r['best_loss']:.4f}",
                f"{r['final_loss']:.4f}",
                f"{prof.get('median_tokens_per_s', 0):,.0f}",
                f"{r['wall_s']:.1f} s",
            ]
        )
    return rows


def _markdown(blocks: list[tuple], out: Path) -> str:
    lines = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            lines += ["#" * int(kind[1]) + " " + block[1], ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "list":
            lines += [f"- {item}" for item in block[1]] + [""]
        elif kind == "table":
            header, rows = block[1], block[2]
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "---|" * len(header))
            lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
            lines.append("")
        elif kind == "img":
            lines += [f"![{block[2]}]({Path(block[1]).relative_to(out)})", "", f"*{block[2]}*", ""]
    return "\n".join(lines)


def _inline(text: str) -> str:
    """Escape, then the two bits of markdown the blocks use: **bold** and `code`."""
    import re

    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.5em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #555; margin-bottom: 1.5em; }
code { background: #f4f4f4; padding: 0 0.2em; }
"""


def _html(blocks: list[tuple]) -> str:
    body = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            body.append(f"<{kind}>{_inline(block[1])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{_inline(block[1])}</p>")
        elif kind == "list":
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in block[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{_inline(h)}</th>" for h in block[1])
            rows = "".join(
                "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>"
                for row in block[2]
            )
            body.append(f"<table><tr>{head}</tr>{rows}</table>")
        elif kind == "img":
            data = base64.b64encode(Path(block[1]).read_bytes()).decode()
            body.append(
                f'<figure><img alt="{html.escape(block[2])}" src="data:image/png;base64,{data}">'
                f"<figcaption>{_inline(block[2])}</figcaption></figure>"
            )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>oneepoch reproduce report</title>"
        f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
