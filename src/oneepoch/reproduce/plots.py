"""The report's figures, as PNG files (matplotlib, Agg; torch-free).

Log axes get plain-number tick labels, so the region where runs end can be read off.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from oneepoch.analysis.runs import Run
from oneepoch.reproduce.experiments import PAPER_EPOCHS
from oneepoch.reproduce.verdicts import PAPER, Claim

Loader = Callable[[str], Run]  # a run of the job (seed 0) by its key

DPI = 110


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plain_log_ticks(ax, axis: str = "y") -> None:
    """Plain-number labels: at 1, 2, 5 per decade where the axis spans decades, denser on a
    narrow axis (a loss axis from 4 to 8 would otherwise carry no label at all)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, MaxNLocator

    target = ax.yaxis if axis == "y" else ax.xaxis
    lo, hi = ax.get_ylim() if axis == "y" else ax.get_xlim()
    if lo > 0 and hi / lo > 20:
        target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    else:  # under a decade and a half: evenly spaced plain numbers
        target.set_major_locator(FixedLocator(MaxNLocator(7).tick_values(lo, hi)))
    target.set_minor_locator(LogLocator(base=10, subs=np.arange(1, 10)))
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    target.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    _pyplot().close(fig)
    return path


def exp1_curves(load: Loader, exp1: list[dict], seed: int, path: Path) -> Path:
    """Train and validation loss of the one-epoch and multi-epoch runs, per E."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(exp1), figsize=(6.2 * len(exp1), 4.4), squeeze=False)
    styles = {"one_epoch": "C0", "repeated": "C3", "regularized": "C1"}
    for ax, x in zip(axes[0], exp1):
        for role, color in styles.items():
            run = load(x["runs"][role])
            _train_and_val(ax, run, color, f"{_role_label(role, x)}: validation")
            ev = run.evals
            if role != "one_epoch":
                i = int(np.argmin(ev["val_loss"]))
                ax.scatter(
                    [ev["step"][i]],
                    [ev["val_loss"][i]],
                    s=70,
                    facecolors="none",
                    edgecolors=color,
                    lw=1.5,
                    zorder=5,
                )
                ax.annotate(
                    f"best {ev['val_loss'][i]:.3f}",
                    (ev["step"][i], ev["val_loss"][i]),
                    textcoords="offset points",
                    xytext=(4, 8),
                    fontsize=8,
                    color=color,
                )
        ax.plot([], [], color="gray", ls="--", lw=0.8, label="training loss (dashed)")
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token)")
        ax.set_yscale("log")
        ax.set_ylim(*_loss_limits(load, x["runs"].values()))
        _plain_log_ticks(ax)
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(f"Experiment 1: one epoch vs {x['epochs']:g} epochs (seed {seed})")
        ax.legend(fontsize=8)
    return _save(fig, path)


def _train_and_val(ax, run: Run, color: str, label: str) -> None:
    """Training loss thin and dashed, validation loss solid with its evaluation points."""
    ln, ev = run.lines, run.evals
    ok = np.isfinite(ln["train_loss"])
    ax.plot(ln["step"][ok], ln["train_loss"][ok], color=color, lw=0.8, alpha=0.45, ls="--")
    ax.plot(ev["step"], ev["val_loss"], color=color, lw=1.6, marker="o", ms=2.5, label=label)


def _role_label(role: str, x: dict) -> str:
    if role == "one_epoch":
        return "one epoch"
    if role == "repeated":
        return f"{x['epochs']:g} epochs"
    return f"{x['epochs']:g} epochs + dropout"


def _loss_limits(load: Loader, keys, from_share: float = 0.0) -> tuple[float, float]:
    """Frame where the runs differ: the first evaluations sit at the unigram plateau, and
    with ``from_share`` only the last part of each run sets the top."""
    vals = []
    for key in keys:
        run = load(key)
        late = run.evals["step"] >= from_share * run.evals["step"].max()
        vals.append(run.evals["val_loss"][late])
        tl = run.lines["train_loss"]
        late = run.lines["step"] >= from_share * run.lines["step"].max()
        vals.append(tl[np.isfinite(tl) & late])
    v = np.concatenate(vals)
    return float(v.min()) * 0.97, float(np.quantile(v, 0.97)) * 1.03


def exp2_curves(load: Loader, exp2_runs: dict, seed: int, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    for i, (p, key) in enumerate(exp2_runs.items()):
        run = load(key)
        final = run.evals["val_loss"][-1]
        _train_and_val(ax, run, f"C{i}", f"dropout {p}: validation (final {final:.3f})")
    ax.plot([], [], color="gray", ls="--", lw=0.8, label="training loss (dashed)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(*_loss_limits(load, exp2_runs.values(), from_share=0.1))
    ax.set_xlim(left=0.08 * max(load(k).evals["step"].max() for k in exp2_runs.values()))
    _label_log_log(
        ax, "step", "loss (nats/token)", f"Experiment 2: dropout under one epoch (seed {seed})"
    )
    return _save(fig, path)


def _label_log_log(ax, xlabel: str, ylabel: str, title: str) -> None:
    """Plain-number ticks on both log axes (once their limits are set), labels, grid, legend."""
    _plain_log_ticks(ax)
    _plain_log_ticks(ax, "x")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=8)


def exp3_fit(run: Run, path: Path, use_first: float) -> Path:
    """The fit module's own figure: the forms fitted to the first part, extended to the end."""
    from oneepoch.analysis.plots import plot_run_fits
    from oneepoch.analysis.runfit import fit_run

    rf = fit_run(run, use_first=use_first, n_boot=100)
    plot_run_fits([rf], path, extend_to=run.final_tokens)
    return path


def exp4_time_to_loss(load: Loader, exp4: list[dict], seed: int, path: Path) -> Path:
    """Validation loss against training wall-clock for every size at every budget."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(exp4), figsize=(5.6 * len(exp4), 4.4), squeeze=False)
    for ax, b in zip(axes[0], exp4):
        keys = {"baseline": b["baseline"]}
        keys.update({name: r["run"] for name, r in b["rules"].items()})
        seen: dict[str, list[str]] = {}  # run -> the rules that chose it
        for name, key in keys.items():
            seen.setdefault(key, []).append(name)
        target = b["per_seed"][seed]["baseline_final_loss"]
        for i, (key, names) in enumerate(seen.items()):
            run = load(key)
            ev = run.evals
            m = run.config.get("model", {})
            label = f"{' = '.join(names)}: {m.get('n_layer')}x{m.get('n_head')}x{m.get('d_model')}"
            ax.plot(
                ev["wall_s"], ev["val_loss"], color=f"C{i}", lw=1.5, marker="o", ms=2, label=label
            )
        ax.axhline(target, color="k", lw=0.8, ls=":", label=f"baseline's final loss {target:.3f}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        lo = min(load(k).evals["val_loss"].min() for k in seen)
        ax.set_ylim(lo * 0.97, target * 1.25)
        _label_log_log(
            ax,
            "training wall-clock (s)",
            "validation loss (nats/token)",
            f"Experiment 4: sizes at {b['fraction']:g}x compute (seed {seed})",
        )
    return _save(fig, path)


def speedups(claims: list[Claim], exp1: list[dict], path: Path) -> Path:
    """Each speedup claim: our seeds (dots), their median (bar) and the paper's range."""
    plt = _pyplot()
    rows = [
        c
        for c in claims
        if isinstance(c.measured, dict) and "values" in c.measured and c.experiment in (1, 4, 5)
    ]
    several_e = len(exp1) > 1
    fig, axes = plt.subplots(
        1,
        2 if several_e else 1,
        figsize=(13 if several_e else 9, 0.55 * len(rows) + 2.2),
        squeeze=False,
    )
    ax = axes[0][0]
    for i, c in enumerate(rows):
        y = len(rows) - 1 - i
        if c.paper:
            lo, hi = c.paper
            ax.add_patch(plt.Rectangle((lo, y - 0.35), hi - lo, 0.7, color="C2", alpha=0.25, lw=0))
        vals = [v for v in c.measured["values"] if v is not None]
        if vals:
            ax.barh(y, float(np.median(vals)), height=0.18, color="C0", alpha=0.7)
            ax.scatter(vals, [y] * len(vals), color="C0", zorder=5, s=18)
            ax.annotate(
                f"{np.median(vals):.2f}x  {c.verdict}",
                (max(vals), y),
                textcoords="offset points",
                xytext=(6, -3),
                fontsize=8,
            )
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([_short(c) for c in reversed(rows)], fontsize=8)
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xlabel("wall-clock speedup (x)")
    ax.add_patch(plt.Rectangle((0, 0), 0, 0, color="C2", alpha=0.25, label="paper's range"))
    ax.scatter([], [], color="C0", s=18, label="our seeds (bar: median)")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    highs = [c.paper[1] * 1.05 for c in rows if c.paper]
    values = [v * 1.35 for c in rows for v in c.measured["values"] if v is not None]
    ax.set_xlim(0, max([3.5, *highs, *values]))
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_title("Speedups against the paper's ranges")
    if several_e:
        ax2 = axes[0][1]
        for vs, color, label in (
            ("vs_repeated", "C3", "vs E epochs"),
            ("vs_regularized", "C1", "vs E epochs + dropout"),
        ):
            es = [x["epochs"] for x in exp1]
            med = [x["summary"][vs]["wall_clock_speedup"].get("median") for x in exp1]
            lo = [x["summary"][vs]["wall_clock_speedup"].get("min") for x in exp1]
            hi = [x["summary"][vs]["wall_clock_speedup"].get("max") for x in exp1]
            ok = [i for i, m in enumerate(med) if m is not None]
            ax2.errorbar(
                [es[i] for i in ok],
                [med[i] for i in ok],
                yerr=[[med[i] - lo[i] for i in ok], [hi[i] - med[i] for i in ok]],
                color=color,
                marker="o",
                capsize=3,
                label=label,
            )
        lo, hi = PAPER["one_epoch_10"]
        e = PAPER_EPOCHS
        ax2.add_patch(
            plt.Rectangle(
                (e - 0.5, lo), 1.0, hi - lo, color="C2", alpha=0.25, label=f"paper, E = {e:g}"
            )
        )
        ax2.set_xscale("log")
        _plain_log_ticks(ax2, "x")
        ax2.set_xlabel("epochs E of the multi-epoch baseline")
        ax2.set_ylabel("wall-clock speedup of one epoch (x)")
        ax2.grid(True, which="both", alpha=0.3)
        ax2.legend(fontsize=8)
        ax2.set_title("Speedup against E (median, min-max over seeds)")
    return _save(fig, path)


def _short(claim: Claim) -> str:
    """The claim's short label (each claim has one), never cut mid-word."""
    return f"exp {claim.experiment}: {claim.label or claim.claim}"
