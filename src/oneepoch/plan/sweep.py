"""The grid of ``oneepoch sweep`` (oneepoch.commands.sweep trains it): model sizes under one
or more compute budgets (IsoFLOP).

Every run of a budget spends the same training FLOPs (C / FLOPs per token of its shape is
its token count), so the curve of final loss against size shows the compute-optimal size,
and the CSV the command writes at the end (one row per run: run, params, tokens,
unique_tokens, loss, flops, wall_s, built by the analysis package's ``sweep_rows``) is what
`oneepoch scaling fit` reads. Shapes are the nearest to each size in non-embedding
parameters, not the fastest: a grid is easier to read when its shapes follow one family.
Batch size and learning rate follow the planner's heuristics.

With ``epochs`` (`oneepoch sweep --epochs 1,4,16`) every (budget, size) is trained once per
epoch count E on the same tokens D, drawn from D / E unique tokens (the first D / E of the
corpus, repeated E times, as the trainer's repeated sampler does): the grid spans repetition
as well as size, for `oneepoch scaling fit --form data-constrained`.

The default sizes are five shapes a factor 2 apart around the budget's Chinchilla size. Shapes
are sparse at the bottom (with a 4,096-token vocabulary the two smallest differ 4x in
non-embedding parameters), so where several sizes fall on one shape, as they do when the
Chinchilla size lies at or below the smallest shape, the next size is taken a factor 2 above
the last shape instead: the grid keeps five sizes, starting higher than centred.
"""

from __future__ import annotations

import math

from oneepoch.errors import UserError

SIZE_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)
SIZE_STEP = 2.0  # between default sizes that would fall on one shape
# `--epochs` alone: one pass; 4, where Muennighoff et al. found repetition nearly as good as
# fresh data; 16, where (R_D* 15.4) it is worth 60% of fresh data and small models overfit.
# Larger scales can add 48 (95% of the ceiling): `--epochs 1,4,16,48`
DEFAULT_EPOCHS = (1.0, 4.0, 16.0)


def grid_shapes(
    wanted: list[float], seq_len: int, vocab_size: int, keep_count: bool
) -> tuple[list[tuple[float, object]], int]:
    """(size, shape) pairs, the distinct shapes nearest to ``wanted`` non-embedding counts
    in ascending order, and how many sizes were moved. ``keep_count``: as many shapes as
    sizes, a size whose shape is already taken (or smaller) moved to SIZE_STEP times the
    last shape taken; else such a size is dropped."""
    from oneepoch.plan.shapes import _sorted_by, near_equal

    chosen, moved = [], 0
    for n in sorted(wanted):
        cand = near_equal(n, "non_embedding", seq_len, vocab_size)[0]
        if chosen and cand.non_embedding <= chosen[-1][1].non_embedding:
            if not keep_count:
                continue
            n = SIZE_STEP * chosen[-1][1].non_embedding
            cand = near_equal(n, "non_embedding", seq_len, vocab_size)[0]
            if cand.non_embedding <= chosen[-1][1].non_embedding:
                ranked = _sorted_by("non_embedding", seq_len, vocab_size)[1]
                larger = [c for c in ranked if c.non_embedding > chosen[-1][1].non_embedding]
                if not larger:
                    break
                cand = larger[0]
            moved += 1
        chosen.append((n, cand))
    return chosen, moved


def build_grid(
    planner, budgets, sizes: list[int] | None, epochs: list[float] | None = None
) -> tuple[list[dict], list[str]]:
    """Grid points {name, budget, flops, epochs, plan} (plan: a planner.RulePlan, maybe
    skipped), and notes on how the sizes became shapes. ``epochs``: one point per epoch count
    for every (budget, size); None: one point, repeating the corpus only where it is short."""
    from oneepoch.plan.budget import Budget
    from oneepoch.plan.planner import RulePlan
    from oneepoch.plan.rules import Chinchilla

    grid, chinchilla = [], Chinchilla()
    notes = []
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
        cands, moved = grid_shapes(wanted, planner.T, planner.V, keep_count=not sizes)
        if moved:
            notes.append(
                f"budget {budget.text}: {moved} of its {len(wanted)} sizes (a factor 2 apart "
                f"around the Chinchilla size, {centre.candidate.non_embedding:,} non-embedding "
                "parameters) fell on a shape already taken, as the smallest shapes lie far "
                "apart, and were moved to twice the last shape: the grid is not centred on "
                "the Chinchilla size"
            )
        elif len(cands) < len(wanted):
            notes.append(
                f"budget {budget.text}: the {len(wanted)} sizes fell on {len(cands)} distinct "
                "shapes; each shape is trained once"
            )
        for n, cand in cands:
            for e in epochs or [None]:
                plan = RulePlan(
                    "sweep", "IsoFLOP grid", "non_embedding", float(n), cand, budget_flops=flops
                )
                _finish(planner, plan, chinchilla, flops / cand.flops_per_token, e)
                calib = planner.calib
                if (
                    not plan.problem
                    and calib.allow_measure
                    and not calib.has(cand.shape, plan.batch_size)
                ):
                    calib.measure(cand.shape, plan.batch_size)
                    plan.notes.clear()
                    _finish(planner, plan, chinchilla, flops / cand.flops_per_token, e)
                s = cand.shape
                name = f"C{flops:.2e}".replace("+", "") + f"/L{s.n_layer}-d{s.d_model}"
                if e is not None:
                    name += f"-e{e:g}"
                point = {"name": name, "budget": budget.text, "flops": flops, "epochs": e}
                grid.append({**point, "plan": plan})
    return grid, notes


def _finish(planner, plan, rule, tokens: float, epochs: float | None) -> None:
    """The planner's batch, steps, LR and time for ``tokens``; with ``epochs``, those tokens
    drawn from tokens / epochs unique ones (as RepeatedSampler sizes its pool), or the
    reason this corpus cannot."""
    from oneepoch.plan.rules import MAX_EPOCHS

    planner.finish(plan, rule, tokens)
    if epochs is None:
        return
    if plan.problem:  # shown as asked, though it will not train
        plan.epochs = float(epochs)
        return
    T = planner.T
    samples = plan.steps * plan.batch_size
    pool = math.ceil(samples / epochs)  # unique windows
    available = planner.corpus.windows(T)
    plan.notes = [n for n in plan.notes if not n.startswith("repeats the corpus")]
    if pool > available:
        plan.problem = (
            f"{epochs:g} epochs of {plan.tokens:,} tokens need {pool * T:,} unique tokens but "
            f"the corpus holds {available * T:,}; lower the budget or drop {epochs:g} from --epochs"
        )
    elif epochs > MAX_EPOCHS:
        plan.problem = (
            f"{epochs:g} epochs is past {MAX_EPOCHS}, where more repetition is worth almost "
            "nothing (Muennighoff et al. 2023); drop it from --epochs"
        )
    elif pool < plan.batch_size:
        plan.problem = (
            f"{epochs:g} epochs of {plan.tokens:,} tokens leave {pool} unique windows, fewer "
            f"than one batch of {plan.batch_size}; raise the budget or lower the epochs"
        )
    elif epochs > 1:
        # the config's epochs as asked: RepeatedSampler takes ceil(samples / epochs) windows
        plan.epochs, plan.unique_tokens = float(epochs), pool * T
        plan.notes.append(f"repeats {pool * T:,} unique tokens {samples / pool:.2f} times")
    else:
        plan.epochs, plan.unique_tokens = 1.0, plan.tokens
