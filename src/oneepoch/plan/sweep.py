"""The grid of ``oneepoch sweep`` (oneepoch.commands.sweep trains it): model sizes under one
or more compute budgets (IsoFLOP).

Every run of a budget spends the same training FLOPs (C / FLOPs per token of its shape is
its token count), so the curve of final loss against size shows the compute-optimal size,
and the CSV the command writes at the end (one row per run: run, params, tokens,
unique_tokens, loss, flops, wall_s, built by the analysis package's ``sweep_rows``) is what
`oneepoch scaling fit` reads. Shapes are the nearest to each size in non-embedding
parameters, not the fastest: a grid is easier to read when its shapes follow one family.
Batch size and learning rate follow the planner's heuristics.
"""

from __future__ import annotations

from oneepoch.errors import UserError

SIZE_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)


def build_grid(planner, budgets, sizes: list[int] | None) -> list[dict]:
    """Grid points {name, budget, flops, plan} (plan: a planner.RulePlan, maybe skipped)."""
    from oneepoch.plan.budget import Budget
    from oneepoch.plan.planner import RulePlan
    from oneepoch.plan.rules import Chinchilla
    from oneepoch.plan.shapes import near_equal

    grid, chinchilla = [], Chinchilla()
    for budget in budgets:
        if budget.kind == "tokens":
            raise UserError(
                f"sweep budgets are compute: give FLOPs (3e14) or a wall-clock time, not {budget.text!r}."
            )
        centre = planner.plan(chinchilla, budget)
        flops = budget.value if budget.kind == "flops" else centre.flops
        if budget.kind != "flops":
            centre = planner.plan(chinchilla, Budget("flops", flops, f"{flops:.3g}"))
        wanted = sizes or [centre.candidate.non_embedding * f for f in SIZE_FACTORS]
        seen = set()
        for n in wanted:
            cand = near_equal(n, "non_embedding", planner.T, planner.V)[0]
            if cand.shape in seen:
                continue
            seen.add(cand.shape)
            plan = RulePlan(
                "sweep", "IsoFLOP grid", "non_embedding", float(n), cand, budget_flops=flops
            )
            planner.finish(plan, chinchilla, flops / cand.flops_per_token)
            calib = planner.calib
            if (
                not plan.problem
                and calib.allow_measure
                and not calib.has(cand.shape, plan.batch_size)
            ):
                calib.measure(cand.shape, plan.batch_size)
                plan.notes.clear()
                planner.finish(plan, chinchilla, flops / cand.flops_per_token)
            s = cand.shape
            name = f"C{flops:.2e}".replace("+", "") + f"/L{s.n_layer}-d{s.d_model}"
            grid.append({"name": name, "budget": budget.text, "flops": flops, "plan": plan})
    return grid
