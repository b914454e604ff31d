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
MARKERS = ("o", "s", "^", "D", "v")  # one per run
FORM_COLORS = {  # one colour per form, the same in every panel and run
    "power": "tab:blue",
    "schedule": "tab:orange",
    "power-nofloor": "tab:green",
    "schedule-nofloor": "tab:red",
    "power-avgfloor": "tab:purple",
    "schedule-avgfloor": "tab:brown",
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_run_fits(run_fits: list[RunFit], path: str | Path, extend_to: float | None = None) -> None:
    """Loss vs x (tokens or steps) and vs wall-clock, log-log, with each form's fit and
    its bootstrap band, extended past the data (to ``extend_to`` x if given).

    One colour per form (runs differ by marker); fitted evaluations are filled, the others
    (warm-up, beyond --use-first) hollow; the --use-first cut-off is a labelled line in
    both panels; the forecast, the --predict-at point and the observed final loss are
    marked with their values. Ticks are plain numbers (2.5, 3, 1M), not powers of ten.
    """
    plt = _pyplot()
    fig = run_fits_figure(run_fits, extend_to)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_fits_figure(run_fits: list[RunFit], extend_to: float | None = None):
    """The matplotlib figure ``plot_run_fits`` saves (for tests and notebooks)."""
    plt = _pyplot()
    fig, (ax_x, ax_w) = plt.subplots(1, 2, figsize=(13, 5.2))
    y_seen, x_seen = [], {ax_x: [], ax_w: []}
    names = [rf.run.name for rf in run_fits]
    for i, rf in enumerate(run_fits):
        marker = MARKERS[i % len(MARKERS)]
        label = rf.run.name if names.count(rf.run.name) == 1 else str(rf.run.path)
        curve = eval_curve(rf.run, rf.x_name)
        fitted = np.isin(curve["x"], next(iter(rf.fits.values())).x)
        wall = rf.run.evals["wall_s"][np.isin(rf.run.evals["step"], curve["steps"])]
        panels = [(ax_x, curve["x"], lambda v: v), (ax_w, wall, rf.wall_at)]
        for ax, xs, _ in panels:
            x_seen[ax].append(xs[np.isfinite(xs) & (xs > 0)])  # every evaluation in view
            ax.scatter(
                xs[fitted], curve["loss"][fitted], s=14, color="black", marker=marker, label=label
            )
            ax.scatter(
                xs[~fitted],
                curve["loss"][~fitted],
                s=14,
                marker=marker,
                facecolors="none",
                edgecolors="black",
                alpha=0.6,
                label=f"{label}: not fitted",
            )
        y_seen.append(curve["loss"])
        for name, fit in rf.fits.items():
            color = FORM_COLORS.get(name, "grey")
            hi = max(fit.x[-1] * EXTEND, extend_to or 0.0, curve["x"].max())
            grid = np.geomspace(fit.x[0], hi, 200)
            mid = fit.predict(grid)
            lines = [(ax_x, grid)]
            if rf.wall_at(grid) is not None:
                lines.append((ax_w, rf.wall_at(grid)))
            for ax, xs in lines:
                x_seen[ax].append(xs)
                ax.plot(xs, mid, color=color, lw=1.4, label=f"{label} {name}")
            if len(fit.boot):
                q = [(1 - fit.level) / 2, (1 + fit.level) / 2]
                lo, up = np.quantile(fit.predict_samples(grid), q, axis=0)
                y_seen.append(lo)
                for ax, xs in lines:
                    ax.fill_between(xs, lo, up, color=color, alpha=0.12, lw=0)
        for ax, _, to_panel in panels:
            _mark_run(ax, rf, curve, to_panel)
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
        _plain_ticks(ax)
    ax_x.legend(fontsize=7)
    level = run_fits[0].settings["level"] if run_fits else 0.9
    ax_x.set_title(f"fits with {level:.0%} bootstrap bands (hollow: not fitted)")
    ax_w.set_title("vs wall-clock (throughput fitted per run)")
    fig.tight_layout()
    return fig


def _mark_run(ax, rf: RunFit, curve: dict, to_panel) -> None:
    """The cut-off, the forecast, the --predict-at point and the observed final loss, in
    one panel's x units (``to_panel`` maps the fit's x there; None: not drawable)."""
    cut = rf.settings.get("cutoff_tokens")
    if cut:
        at = to_panel(cut if rf.x_name == "tokens" else float(rf.run.tokens_to_steps(cut)))
        if at is not None:
            share = rf.settings["use_first"]
            ax.axvline(float(at), color="black", lw=0.9, ls=":")
            ax.annotate(
                f"fit cut-off (first {share:.0%})",
                (float(at), 0.98),
                xycoords=("data", "axes fraction"),
                rotation=90,
                fontsize=7,
                ha="right",
                va="top",
            )
    final_x, final_loss = to_panel(curve["x"][-1]), float(curve["loss"][-1])
    if final_x is not None:
        ax.plot(float(final_x), final_loss, marker="*", ms=12, color="black", ls="none")
        ax.annotate(
            f"observed final {final_loss:.3f}",
            (float(final_x), final_loss),
            textcoords="offset points",
            xytext=(6, 8),
            fontsize=7,
        )
    prediction = rf.predictions.get("predict_at")
    at = None if prediction is None else to_panel(prediction["x"])
    if at is None:
        return
    forecast = prediction["forecast"]
    ax.axvline(float(at), color="grey", lw=0.8, ls="--")
    if forecast["value"] is None:
        return
    low, high = forecast["ci_low"], forecast["ci_high"]
    yerr = None
    if low is not None and high is not None:
        yerr = [[forecast["value"] - low], [high - forecast["value"]]]
    ax.errorbar(float(at), forecast["value"], yerr=yerr, marker="D", color="black", capsize=3)
    interval = f" [{low:.3f}, {high:.3f}]" if yerr is not None else ""
    ax.annotate(
        f"forecast at {_plain(prediction['x'])}: {forecast['value']:.3f}{interval}",
        (float(at), forecast["value"]),
        textcoords="offset points",
        xytext=(-8, -14),
        fontsize=7,
        ha="right",
    )


def _plain_ticks(ax) -> None:
    """Plain-number tick labels on log axes (2.5, 3, 1M), minor ones too, so a loss axis
    spanning less than a decade still shows its values."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    plain = FuncFormatter(lambda v, _: _plain(v))
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))  # too crowded to label
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.yaxis.set_minor_locator(LogLocator(base=10, subs=(1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9)))


def _plain(v: float) -> str:
    """3, 2.5, 1.5k, 20M, 3G: a number as people write it."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{suffix}"
    return f"{v:.3g}"


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
