"""What a data-constrained law fitted on this corpus predicts for experiment 1
(`oneepoch reproduce --law LAW.json`), beside what the runs measured.

Experiment 1 trains one model (N parameters) for T tokens, once over T unique tokens and once
E times over T / E. Under the law, the E-epoch run ends at L(N, T, T / E); the one-epoch run
reaches that loss after the tokens d with L(N, d, d) = L(N, T, T / E), so the law's step
speedup is T / d. The law describes runs trained to the end of their schedule, and the
measured speedup compares points on one run's curve; the two agree only as far as a curve's
points stand for shorter runs. Also: how many epochs this corpus affords the preset's model
before repetition costs 1% and 5% of loss (``value_of_data.epochs_affordable``).
Intervals: the law's bootstrap replicates; none where its R_D* is not identified.
"""

from __future__ import annotations

import numpy as np

D_GRID_POINTS = 400


def law_path(job: dict) -> str | None:
    """The law file `reproduce --law` gave (experiment 4's fitted rule), or None."""
    for budget in job["plan"]["exp4"]:
        for name in budget["rules"]:
            if name.startswith("fitted:"):
                return name.split(":", 1)[1]
    return None


def predict(job: dict) -> dict | None:
    """{"law", "params", "exp1": [{"epochs", "step_speedup"}], "epochs_affordable"} for the
    job's law, a note instead where it has no repetition term, None without a law."""
    from oneepoch.analysis.scaling import load_law, predict_params
    from oneepoch.analysis.value_of_data import (
        epochs_affordable,
        estimate,
        least_reaching,
        point_and_replicates,
    )
    from oneepoch.flops import Shape, param_counts

    path = law_path(job)
    if path is None:
        return None
    law = load_law(path)
    if law.form != "data-constrained":
        return {"law": path, "note": "a chinchilla law has no repetition term to predict with"}
    p, corpus = job["preset_settings"], job["plan"]["corpus"]
    shape = Shape(p["n_layer"], p["n_head"], p["d_model"], p["seq_len"], corpus["vocab_size"])
    n = param_counts(shape)["non_embedding"]  # the count `oneepoch sweep` fits laws in
    tokens = p["steps"] * p["batch_size"] * p["seq_len"]
    P = point_and_replicates(law)
    blocked = "R_D_star" in law.not_identified
    exp1 = []
    for x in job["plan"]["exp1"]:
        e = x["epochs"]
        row = {"epochs": e}
        if blocked:
            row["note"] = "not identified: the law's R_D* ended at a bound"
        else:
            target = predict_params("data-constrained", P, n, tokens, tokens / e)  # [B]
            grid = np.geomspace(tokens / e / 10, tokens, D_GRID_POINTS)
            fresh = predict_params("data-constrained", P, n, grid, grid)  # [B, grid]
            row["step_speedup"] = estimate(tokens / least_reaching(fresh, grid, target))
        exp1.append(row)
    unique = corpus["windows"] * p["seq_len"]
    return {
        "law": path,
        "params": n,
        "tokens": tokens,
        "exp1": exp1,
        "epochs_affordable": epochs_affordable(law, n, unique),
    }


def blocks(prediction: dict | None, measured: list[dict]) -> list[tuple]:
    """Report blocks: experiment 1's speedups against E beside the law's, and the row
    "epochs this corpus affords"."""
    if prediction is None:
        return []
    if "note" in prediction:
        return [("p", f"The law {prediction['law']}: {prediction['note']}.")]
    rows = []
    for x, law in zip(measured, prediction["exp1"]):
        s = x["summary"]["vs_repeated"]["step_speedup"]
        ours = f"{s['median']:.2f}x" if s.get("median") is not None else "-"
        rows.append(
            [
                f"{x['epochs']:g}",
                ours,
                law.get("note") or _interval(law["step_speedup"], "{:.2f}x"),
            ]
        )
    afford = []
    for r in prediction["epochs_affordable"]["penalties"]:
        value = r.get("note") or _interval(r["epochs"], "{:.3g}")
        afford.append([f"epochs this corpus affords ({r['penalty']:.0%} loss penalty)", value])
    return [
        ("h3", "What the fitted law predicts"),
        (
            "p",
            f"Under the data-constrained law {prediction['law']} (fitted on this corpus; "
            "intervals from its bootstrap replicates), the E-epoch run ends at "
            "L(N, T, T/E), and a one-epoch run reaches that loss after the tokens d with "
            "L(N, d, d) equal to it: the law's step speedup is T/d. The law describes runs "
            "trained to the end of their schedule; the measured speedup compares points of "
            "one curve, which the law only approximates. Epochs afforded: the most epochs of "
            "the corpus the preset's model takes before its loss exceeds that of the same "
            "tokens all fresh by 1% or 5%.",
        ),
        ("table", ["E", "measured step speedup (median)", "the law's step speedup"], rows),
        ("table", ["", "the law"], afford),
    ]


def _interval(est: dict, fmt: str) -> str:
    if est.get("value") is None:
        return "not reached"
    text = fmt.format(est["value"])
    if est.get("ci_low") is None and est.get("ci_high") is None:
        return text
    low = fmt.format(est["ci_low"]) if est.get("ci_low") is not None else "?"
    high = fmt.format(est["ci_high"]) if est.get("ci_high") is not None else "inf"
    return f"{text} [{low}, {high}]"
