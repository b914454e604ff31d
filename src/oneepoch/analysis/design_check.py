"""Would a repetition grid identify R_D*? Answered by simulation before anything trains.

`oneepoch sweep --epochs` plans runs of sizes N on tokens D drawn from U unique tokens. Whether
`oneepoch scaling fit --form data-constrained` can then estimate R_D* depends on the grid
(how far the epochs reach, how many sizes and budgets) and on the law itself, which is not
known yet. So the check generates losses on the planned (N, D, U) from trial laws of the
family the recovery benchmark draws from (benchmarks/scaling_recovery.py), alpha = beta =
0.35, R_N* = 5, R_D* = 5, 15 and 40, each term half of E at the grid's median, 0.5%
log-normal noise, and fits them with the paper's procedure as the command would (with
``--tie alpha=beta`` when the grid has too few single-epoch runs for the untied base). R_D*
is identified in a trial when its estimate is inside its range and its interval closed.
"""

from __future__ import annotations

import numpy as np

TRIAL_R_D = (5.0, 15.0, 40.0)
TRIAL_NOISE = 0.005
TRIAL_BOOTSTRAP = 50


def trial_law(N, D, r_d_star: float) -> dict:
    """A data-constrained law whose terms are each half of E at the grid's median N, D."""
    alpha = beta = 0.35
    E = 3.0
    return {
        "E": E,
        "A": 0.5 * E * float(np.median(N)) ** alpha,
        "B": 0.5 * E * float(np.median(D)) ** beta,
        "alpha": alpha,
        "beta": beta,
        "R_D_star": r_d_star,
        "R_N_star": 5.0,
    }


def r_d_identification(N, D, U, seed: int = 0) -> list[dict]:
    """One record per trial R_D*: {"R_D_star", "tie", "identified", "interval" or "reason"}."""
    from oneepoch.analysis.scaling import ScalingLaw, fit_scaling, paper_base_rows
    from oneepoch.errors import UserError

    N, D, U = (np.asarray(v, dtype=float) for v in (N, D, U))
    tie = int(np.sum(U >= D)) < paper_base_rows(tie=False)
    out = []
    for k, r_d in enumerate(TRIAL_R_D):
        law = trial_law(N, D, r_d)
        rng = np.random.default_rng(seed + k)
        L = ScalingLaw("data-constrained", law).predict(N, D, U)
        L = L * np.exp(rng.normal(0.0, TRIAL_NOISE, L.size))
        try:
            fit = fit_scaling(
                {"N": N, "D": D, "U": U, "L": L},
                "data-constrained",
                n_boot=TRIAL_BOOTSTRAP,
                seed=seed + k,
                tie=tie,
            )
        except UserError as exc:
            out.append({"R_D_star": r_d, "tie": tie, "identified": False, "reason": str(exc)})
            continue
        est = fit.params()["R_D_star"]
        closed = est["ci_low"] is not None and est["ci_high"] is not None
        record = {"R_D_star": r_d, "tie": tie, "identified": closed and "note" not in est}
        record["interval"] = [est["ci_low"], est["ci_high"]] if closed else None
        out.append(record)
    return out
