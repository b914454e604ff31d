"""PNG plots: learning curves with their fits and extrapolation bands; IsoFLOP curves.

matplotlib is imported inside the functions (Agg backend), so importing the analysis
package stays cheap and needs no display.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from oneepoch.analysis.runfit import RunFit
from oneepoch.analysis.runs import eval_curve
from oneepoch.analysis.scaling import ScalingFit

EXTEND = 3.0  # draw fits this far past the last evaluation


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_run_fits(run_fits: list[RunFit], path: str | Path, extend_to: float | None = None) -> None:
    """Loss vs x (tokens or steps) and vs wall-clock, log-log, with each form's fit and
    its bootstrap band, extended past the data (to ``extend_to`` x if given).

    Fitted evaluations are filled, the others (warmup, beyond --use-first) hollow; the
    axes frame the fitted region so the bands stay visible.
    """
    plt = _pyplot()
    fig, (ax_x, ax_w) = plt.subplots(1, 2, figsize=(12, 4.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = {"power": "-", "schedule": "--", "power-nofloor": ":", "schedule-nofloor": "-."}
    y_seen, x_seen = [], {ax_x: [], ax_w: []}
    names = [rf.run.name for rf in run_fits]
    for i, rf in enumerate(run_fits):
        color = colors[i % len(colors)]
        label = rf.run.name if names.count(rf.run.name) == 1 else str(rf.run.path)
        curve = eval_curve(rf.run, rf.x_name)
        fitted = np.isin(curve["x"], next(iter(rf.fits.values())).x)
        wall = rf.run.evals["wall_s"][np.isin(rf.run.evals["step"], curve["steps"])]
        for ax, xs in ((ax_x, curve["x"]), (ax_w, wall)):
            ax.scatter(xs[fitted], curve["loss"][fitted], s=12, color=color, label=label)
            ax.scatter(
                xs[~fitted],
                curve["loss"][~fitted],
                s=12,
                facecolors="none",
                edgecolors=color,
                alpha=0.6,
            )
        y_seen.append(curve["loss"][fitted])
        for name, fit in rf.fits.items():
            hi = max(fit.x[-1] * EXTEND, extend_to or 0.0, curve["x"].max())
            grid = np.geomspace(fit.x[0], hi, 200)
            mid = fit.predict(grid)
            lines = [(ax_x, grid)]
            if rf.wall_at(grid) is not None:
                lines.append((ax_w, rf.wall_at(grid)))
            for ax, xs in lines:
                x_seen[ax].append(xs)
                ax.plot(
                    xs,
                    mid,
                    color=color,
                    ls=styles.get(name, ":"),
                    lw=1.4,
                    label=f"{label} {name}",
                )
            if len(fit.boot):
                q = [(1 - fit.level) / 2, (1 + fit.level) / 2]
                lo, up = np.quantile(fit.predict_samples(grid), q, axis=0)
                y_seen.append(lo)
                for ax, xs in lines:
                    ax.fill_between(xs, lo, up, color=color, alpha=0.15, lw=0)
        if rf.settings.get("cutoff_tokens"):
            cut = rf.settings["cutoff_tokens"]
            at = cut if rf.x_name == "tokens" else float(rf.run.tokens_to_steps(cut))
            ax_x.axvline(at, color=color, lw=0.8, ls=":")
    x_label = "training tokens" if run_fits and run_fits[0].x_name == "tokens" else "steps"
    for ax, xl in ((ax_x, x_label), (ax_w, "training wall-clock (s)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xl)
        ax.set_ylabel("validation loss (nats/token)")
        ax.grid(True, which="both", alpha=0.3)
        if y_seen:
            y = np.concatenate(y_seen)
            ax.set_ylim(y.min() * 0.97, y.max() * 1.1)
        if x_seen[ax]:
            x = np.concatenate(x_seen[ax])
            ax.set_xlim(x.min() / 1.5, x.max() * 1.1)
    ax_x.legend(fontsize=7)
    level = run_fits[0].settings["level"] if run_fits else 0.9
    ax_x.set_title(f"fits with {level:.0%} bootstrap bands (hollow: not fitted)")
    ax_w.set_title("vs wall-clock (throughput fitted per run)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_isoflops(fit: ScalingFit, path: str | Path) -> None:
    """Loss vs parameters at fixed compute (C = 6ND): the data grouped into IsoFLOP
    slices, and the fitted law along each slice, its minimum marked."""
    plt = _pyplot()
    law = fit.law()
    N, D, L = fit.data["N"], fit.data["D"], fit.data["L"]
    U = fit.data.get("U")
    log_c = np.log10(6 * N * D)
    fig, ax = plt.subplots(figsize=(7, 5))
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(len(_slices(log_c)), 1)))
    for color, members in zip(colors, _slices(log_c)):
        c = 10 ** float(np.median(log_c[members]))
        ax.scatter(N[members], L[members], color=color, s=16)
        n_grid = np.geomspace(N[members].min() / 3, N[members].max() * 3, 200)
        d_grid = c / (6 * n_grid)
        u = None if U is None else np.minimum(d_grid, np.median(U[members]))
        pred = law.predict(n_grid, d_grid, u)
        ax.plot(n_grid, pred, color=color, lw=1.2, label=f"C = {c:.2g} FLOPs")
        k = int(np.argmin(pred))
        ax.plot(n_grid[k], pred[k], marker="*", color=color, ms=10)
    ax.set_xscale("log")
    ax.set_xlabel("parameters N")
    ax.set_ylabel("loss")
    ax.set_title(f"IsoFLOP slices, fitted {law.form} law")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _slices(log_c: np.ndarray, gap: float = 0.15) -> list[np.ndarray]:
    """Indices grouped by compute: a new slice starts wherever sorted log10 C jumps by
    more than ``gap`` decades."""
    order = np.argsort(log_c)
    breaks = np.flatnonzero(np.diff(log_c[order]) > gap) + 1
    return [g for g in np.split(order, breaks) if g.size]
