"""`fit --plot`: the figure's content, checked on the matplotlib objects."""

import matplotlib.colors as mcolors
import numpy as np
import pytest

from oneepoch.analysis.plots import FORM_COLORS, plot_run_fits, run_fits_figure
from oneepoch.analysis.runfit import fit_run
from oneepoch.analysis.runs import load_run
from oneepoch.analysis.synthetic import power_law, write_run


@pytest.fixture
def fitted(tmp_path):
    lr = lambda s: 1e-3 * np.minimum(np.asarray(s, dtype=float) / 50, 1.0)  # noqa: E731
    write_run(tmp_path / "run", power_law(2.0, 400.0, 0.3), noise=0.003, warmup_steps=50, lr=lr)
    run = load_run(tmp_path / "run")
    rf = fit_run(run, use_first=0.3, n_boot=50)
    rf.predict_at(run.final_tokens)
    return rf


def test_figure_marks_cutoff_forecast_and_final_in_every_panel(fitted):
    fig = run_fits_figure([fitted])
    forecast = fitted.predictions["predict_at"]["forecast"]
    final = float(fitted.run.evals["val_loss"][-1])
    assert len(fig.axes) == 2
    for ax in fig.axes:
        texts = [t.get_text() for t in ax.texts]
        assert "fit cut-off (first 30%)" in texts
        assert f"observed final {final:.3f}" in texts
        wanted = f": {forecast['value']:.3f} [{forecast['ci_low']:.3f}, {forecast['ci_high']:.3f}]"
        assert any(t.startswith("forecast at ") and t.endswith(wanted) for t in texts), texts
        # one colour per form, whatever the panel
        for line in ax.get_lines():
            name = line.get_label().removeprefix(f"{fitted.run.name} ")
            if name in FORM_COLORS:
                assert mcolors.same_color(line.get_color(), FORM_COLORS[name])
        # points left out of the fit are hollow, fitted ones filled
        hollow = [c for c in ax.collections if c.get_label().endswith("not fitted")]
        assert hollow and all(len(c.get_facecolors()) == 0 for c in hollow)
        filled = [c for c in ax.collections if c.get_label() == fitted.run.name]
        assert filled and all(c.get_facecolors()[0][3] > 0 for c in filled)
        # every evaluation, fitted or not (the warm-up's high early losses too), is in view
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        points = np.concatenate([c.get_offsets() for c in hollow + filled])
        points = points[points[:, 0] > 0]  # a wall-clock of 0 has no place on a log axis
        assert len(points) >= len(fitted.run.evals["val_loss"]) - 1
        assert np.all((points[:, 0] >= x0) & (points[:, 0] <= x1)), (x0, x1, points[:, 0])
        assert np.all((points[:, 1] >= y0) & (points[:, 1] <= y1)), (y0, y1, points[:, 1])
    labelled_forms = {
        line.get_label().split()[-1] for ax in fig.axes for line in ax.get_lines()
    } & set(FORM_COLORS)
    assert labelled_forms == set(fitted.fits)


def test_log_axes_carry_plain_number_ticks(fitted, tmp_path):
    fig = run_fits_figure([fitted])
    fig.canvas.draw()
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels(minor=True) + ax.get_yticklabels()]
    shown = [t for t in labels if t]
    assert shown and not any("$" in t or "^" in t for t in shown), shown
    assert all(float(t) > 0 for t in shown)
    x_labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert x_labels and all(t[-1] in "kMG" or t[-1].isdigit() for t in x_labels), x_labels
    path = tmp_path / "fit.png"
    plot_run_fits([fitted], path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
