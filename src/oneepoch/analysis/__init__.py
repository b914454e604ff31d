"""Learning-curve and scaling-law analysis of run directories and CSVs.

Importable without torch (it reads only files). The public API is loaded lazily, so
importing the package (as the CLI does for --help) costs nothing until it is used:

    from oneepoch.analysis import load_run, fit_run, compare_runs
    from oneepoch.analysis import load_law, compute_optimal, predict_loss

See docs/analysis.md for the forms, methods and JSON schemas.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Run": "runs",
    "load_run": "runs",
    "eval_curve": "runs",
    "LRSchedule": "lr_schedule",
    "PowerForm": "curves",
    "ScheduleForm": "curves",
    "CurveFit": "curves",
    "fit_curve": "curves",
    "RunFit": "runfit",
    "fit_run": "runfit",
    "fit_joint": "joint",
    "predict_loss_at": "extrapolate",
    "x_to_reach": "extrapolate",
    "compare_runs": "compare",
    "ScalingFit": "scaling",
    "ScalingLaw": "scaling",
    "fit_scaling": "scaling",
    "read_csv": "scaling",
    "sweep_rows": "scaling",
    "load_law": "scaling",
    "predict_loss": "scaling",
    "compute_optimal": "scaling",
    "plot_run_fits": "plots",
    "plot_isoflops": "plots",
    "run_fits_figure": "plots",
}

# names that differ from the attribute in their module
_RENAMED = {"predict_loss_at": "predict_loss"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
    return getattr(module, _RENAMED.get(name, name))


def __dir__():
    return __all__
