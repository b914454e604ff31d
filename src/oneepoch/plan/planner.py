"""Putting a plan together: budget -> rule -> parameter target -> fastest shape -> run.

For each rule: the budget becomes a compute budget C (FLOPs as given; tokens by solving the
rule's D(C) = tokens; wall-clock by solving the run's estimated elapsed time = budget), the
rule turns C into a parameter target, the near-equal shapes compete on measured tokens/s,
and the winner's tokens are fixed so the run spends the budget (C / FLOPs per token, the
token budget, or the tokens that fit the time once evaluation and checkpoints are paid, see
``Planner._fit_time``). Then batch size, steps, epochs, learning rate and the time estimate
follow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from oneepoch.config import ModelConfig, TrainConfig
from oneepoch.errors import UserError
from oneepoch.flops import Shape, activation_bytes, train_flops_per_token
from oneepoch.plan.budget import Budget
from oneepoch.plan.calibrate import Calibration, Rate
from oneepoch.plan.estimate import Estimate, estimate_run
from oneepoch.plan.heuristics import (
    MIN_BATCH,
    MIN_STEPS,
    batch_size,
    grad_accum,
    learning_rate,
)
from oneepoch.plan.rules import (
    MAX_EPOCHS,
    TOKENS_PER_PARAM,
    Allocation,
    RuleContext,
    TokensPerParam,
    solve_increasing,
)
from oneepoch.plan.shapes import (
    NEAR_EQUAL,
    Candidate,
    FlopsCurve,
    all_candidates,
    near_equal,
    smallest,
)
from oneepoch.sampler import num_windows
from oneepoch.units import format_seconds

C_HIGHEST = 1e30
MEASURE_CHOSEN, MEASURE_OTHERS = 3, 1  # near-equal shapes timed for the chosen rule / others
MAX_ROUNDS = 40  # one measurement a round (the smallest wanted); the 30 s bound it first
RATIO_TOLERANCE = 1.10  # a ratio rule's shape keeps its tokens per parameter within 10%
RATIO_SEARCH = 3.0  # shapes within this factor of the rule's N are tried for the ratio


@dataclass
class Corpus:
    train_tokens: int
    vocab_size: int
    val_tokens: int | None = None  # unknown with --unique-tokens
    path: str = ""
    data_bytes: int = 0

    def windows(self, seq_len: int) -> int:
        return num_windows(self.train_tokens, seq_len)

    def usable_tokens(self, seq_len: int) -> int:
        """Tokens a one-pass run can see: whole windows of seq_len (sampler.py)."""
        return self.windows(seq_len) * seq_len


def _short(n: float) -> str:
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.3g}{suffix}"
    return f"{n:.0f}"


def corpus_of_dataset(path: str | Path) -> Corpus:
    """The corpus of a prepared dataset, from its manifest alone: no shard is opened."""
    from oneepoch.data.dataset import read_manifest

    manifest = read_manifest(path)
    try:
        splits = manifest["splits"]
        train = int(splits["train"]["tokens"])
        vocab = int(manifest["tokenizer"]["vocab_size"])
        shards = splits["train"].get("shards", []) + splits.get("val", {}).get("shards", [])
    except (KeyError, TypeError, ValueError):
        raise UserError(
            f"{path}/manifest.json lacks split token counts or the vocabulary size; "
            "run `oneepoch prepare` again."
        ) from None
    val = splits.get("val", {}).get("tokens")
    width = 2 if manifest.get("dtype", "uint16") == "uint16" else 4
    size = sum(int(s.get("tokens", 0)) for s in shards) * width
    return Corpus(train, vocab, int(val) if val is not None else None, str(path), size)


class UniformRate:
    """Stands in for a Calibration: every shape at the same FLOP/s, nothing measured.

    Plans made with it rank shapes by their rule alone (a ratio rule's band by nearness to
    its ratio, see ``Planner._by_ratio``), identically on every machine: `oneepoch
    reproduce` plans its rules' runs so, since a job's runs may not change between the
    invocations that train it. Its times are not this machine's.
    """

    allow_measure = False
    max_activation_bytes = None
    dtype = "float32"
    machine = "uniform"

    def __init__(self, flops_per_s: float = 1e10):
        self.flops_per_s = flops_per_s

    def has(self, shape: Shape, batch: int) -> bool:
        return True

    def rate(self, shape: Shape, batch: int) -> Rate:
        return self.model_rate(train_flops_per_token(shape), 0, batch, shape.seq_len)

    def model_rate(self, flops_per_token, total_params, batch, seq_len) -> Rate:
        tokens_per_s = self.flops_per_s / flops_per_token
        return Rate(batch * seq_len / tokens_per_s, tokens_per_s, 3 * tokens_per_s, 0.01, "uniform")


@dataclass
class Settings:
    """What the planner holds fixed (dtype and device live in the calibration)."""

    seq_len: int = ModelConfig.seq_len  # the trainer's defaults
    tokens_per_param: float = TOKENS_PER_PARAM
    eval_tokens: int = TrainConfig.eval_tokens
    fitted_count: str = "non_embedding"
    batch_size: int | None = None  # sequences per step held fixed (reproduce); else the heuristic's


@dataclass
class RulePlan:
    rule: str
    source: str
    count: str  # the parameter count the rule speaks of
    target_params: float = 0.0
    candidate: Candidate | None = None
    tokens: int = 0
    unique_tokens: int = 0
    epochs: float = 1.0
    steps: int = 0
    batch_size: int = 0
    lr: float = 0.0
    flops: float = 0.0
    budget_flops: float = 0.0
    estimate: Estimate | None = None
    pred_loss: float | None = None
    notes: list[str] = field(default_factory=list)
    problem: str | None = None
    contenders: list[Candidate] = field(default_factory=list)
    target_ratio: float | None = None  # the rule's tokens per parameter, for ratio rules
    # (shape, batch) lying between the two shapes that bracket a ratio no shape meets: their
    # ratio rests on an estimated rate; measured, one of them may meet it
    between: list[tuple[Shape, int]] = field(default_factory=list)

    @property
    def shape(self) -> Shape | None:
        return self.candidate.shape if self.candidate else None

    @property
    def tokens_per_param(self) -> float | None:
        """Tokens per parameter as planned, in the rule's count (all or non-embedding)."""
        if self.candidate is None or not self.tokens:
            return None
        return self.tokens / self.candidate.count(self.count)

    def to_json(self) -> dict:
        c, s = self.candidate, self.shape
        return {
            "params": c.total if c else None,
            "params_non_embedding": c.non_embedding if c else None,
            "count": self.count,
            "target_params": self.target_params,
            "tokens_per_param": self.tokens_per_param,
            "target_tokens_per_param": self.target_ratio,
            "tokens": self.tokens,
            "unique_tokens": self.unique_tokens,
            "epochs": self.epochs,
            "steps": self.steps,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "shape": (
                {
                    "n_layer": s.n_layer,
                    "n_head": s.n_head,
                    "d_model": s.d_model,
                    "seq_len": s.seq_len,
                    "vocab_size": s.vocab_size,
                }
                if s
                else None
            ),
            "flops_per_token": c.flops_per_token if c else None,
            "flops": self.flops,
            "budget_flops": self.budget_flops,
            "est_seconds": self.estimate.elapsed_s if self.estimate else None,
            "est_train_seconds": self.estimate.train_s if self.estimate else None,
            "estimate": self.estimate.to_json() if self.estimate else None,
            "pred_loss": self.pred_loss,
            "source": self.source,
            "notes": self.notes,
            "problem": self.problem,
        }


class Planner:
    def __init__(self, corpus: Corpus, settings: Settings, calibration: Calibration):
        self.corpus, self.settings, self.calib = corpus, settings, calibration
        self.T, self.V = settings.seq_len, corpus.vocab_size
        if corpus.windows(self.T) < MIN_BATCH:
            raise UserError(
                f"the training split holds {corpus.train_tokens:,} tokens, fewer than "
                f"{MIN_BATCH} windows of {self.T + 1}; prepare more data or lower --seq-len."
            )
        self.curve = FlopsCurve(self.T, self.V)
        self.ctx = RuleContext(self.curve, corpus.usable_tokens(self.T))
        windows = max(1, settings.eval_tokens // self.T)
        if corpus.val_tokens is not None:
            windows = min(windows, max(1, num_windows(corpus.val_tokens, self.T)))
        self.val_windows = windows

    def batch_for(self, tokens: float) -> int:
        """Sequences per step of a run of ``tokens`` tokens: the fixed batch, or the heuristic's."""
        return self.settings.batch_size or batch_size(tokens, self.T)

    # -- one rule ------------------------------------------------------------------------

    def plan(self, rule, budget: Budget) -> RulePlan:
        # the least compute worth searching: one step of the smallest model
        lowest = smallest(self.T, self.V).flops_per_token * MIN_BATCH * self.T
        if budget.kind == "flops":
            flops = budget.value
        elif budget.kind == "tokens":
            flops = solve_increasing(
                lambda c: rule.allocate(c, self.ctx).tokens, budget.value, lowest, C_HIGHEST
            )
        else:
            flops = solve_increasing(
                lambda c: self._smooth_elapsed(rule, c), budget.value, lowest, C_HIGHEST
            )
        return self._realize(rule, flops, budget)

    def _smooth_elapsed(self, rule, flops: float) -> float:
        """Elapsed time of the rule's run at compute ``flops``, for the rule's own (N, D),
        with FLOPs per token and throughput as smooth functions of N. Using the discrete
        shapes here would make time jump between neighbouring shapes, and the search would
        settle on the jump instead of on the rule's N."""
        alloc = rule.allocate(flops, self.ctx)
        tokens = min(alloc.tokens, alloc.max_tokens or alloc.tokens)
        fpt = self.curve(alloc.params, alloc.count)
        b = self.batch_for(tokens)
        steps = max(1, int(tokens // (b * self.T)))
        rate = self.calib.model_rate(fpt, alloc.params, b, self.T)
        est = estimate_run(self.T, b, steps, rate, self.val_windows, self.corpus.data_bytes)
        return est.elapsed_s

    def _realize(self, rule, flops: float, budget: Budget) -> RulePlan:
        """The run for compute ``flops``: the rule's parameter target, the fastest near-equal
        shape (for a ratio rule: the fastest that keeps its tokens per parameter), and the
        tokens that spend the budget."""
        alloc = rule.allocate(flops, self.ctx)
        ratio_note = None
        between = []
        if isinstance(rule, TokensPerParam):
            ranked, tokens, batch, ratio_note, between = self._by_ratio(rule, alloc, flops, budget)
        elif budget.kind == "seconds":
            alloc, ranked, tokens, batch = self._fit_time(rule, alloc, budget.value)
        else:
            ranked, batch = self._ranked(alloc), None
            tokens = flops / ranked[0].flops_per_token if budget.kind == "flops" else budget.value
            if alloc.max_tokens is not None:
                tokens = min(tokens, alloc.max_tokens)
        best = ranked[0]
        plan = RulePlan(rule.name, rule.source, alloc.count, alloc.params, budget_flops=flops)
        plan.candidate, plan.contenders = best, ranked
        plan.target_ratio = rule.r if isinstance(rule, TokensPerParam) else None
        plan.between = between
        self.finish(plan, rule, tokens, batch)
        plan.budget_flops = flops if budget.kind == "flops" else plan.flops
        if alloc.data_limited:
            plan.notes.append(
                f"the corpus holds {self.ctx.unique_tokens:,.0f} usable tokens, fewer than the "
                f"budget wants: one epoch of all of it with N = U / {rule.r:g}"
                + self._budget_share(plan, budget)
            )
        if ratio_note:
            plan.notes.append(ratio_note)
        count = best.count(alloc.count)
        if (
            ratio_note is None
            and plan.target_ratio is None
            and (count < alloc.params / NEAR_EQUAL or count > alloc.params * NEAR_EQUAL)
        ):
            plan.notes.append(
                f"the rule's {alloc.params:,.0f} {alloc.count.replace('_', '-')} parameters "
                f"became the nearest shape's {count:,}"
            )
        return plan

    def _tokens_on(self, cand: Candidate, rule, alloc: Allocation, flops: float, budget: Budget):
        """(tokens, batch) of the budget spent on shape ``cand`` (batch None: the heuristic's).
        For a wall-clock budget the batch follows the rule's tokens for that shape, so a run
        near a batch boundary does not flip between two batches' rates."""
        batch = None
        if budget.kind == "seconds":
            wanted = rule.r * cand.count(alloc.count)
            if alloc.max_tokens is not None:
                wanted = min(wanted, alloc.max_tokens)
            batch = self.batch_for(wanted)
            tokens = self._tokens_for_time(cand.shape, batch, budget.value)
        elif budget.kind == "flops":
            tokens = flops / cand.flops_per_token
        else:
            tokens = budget.value
        if alloc.max_tokens is not None:
            tokens = min(tokens, alloc.max_tokens)
        return tokens, batch

    def _by_ratio(self, rule, alloc: Allocation, flops: float, budget: Budget):
        """Shapes for a rule of D = r N: discrete shapes, attention and the output head move
        a shape's tokens per parameter away from r, so every shape within RATIO_SEARCH of the
        rule's N is tried with the tokens the budget gives it; those within RATIO_TOLERANCE
        of r compete on measured speed (highest FLOP/s first, then nearest to r). When none is, the nearest in ratio
        is used and the note says why. Returns (ranked, tokens, batch, note, between): the
        last, shapes whose count lies between the two that bracket r, to be measured."""
        r, kind, between = rule.r, alloc.count, []
        lo, hi = alloc.params / RATIO_SEARCH, alloc.params * RATIO_SEARCH
        pool = [c for c in all_candidates(self.T, self.V) if lo <= c.count(kind) <= hi]
        for c in near_equal(alloc.params, kind, self.T, self.V):
            if c not in pool:
                pool.append(c)
        tried = []
        for c in pool:
            tokens, batch = self._tokens_on(c, rule, alloc, flops, budget)
            b = batch or self.batch_for(tokens)
            planned = int(tokens // (b * self.T)) * b * self.T  # what finish() will plan
            ratio = max(planned, 1) / c.count(kind)
            tried.append((abs(math.log(ratio / r)), ratio, c, tokens, batch))
        band = [t for t in tried if t[0] <= math.log(RATIO_TOLERANCE)]
        note = None
        if band:
            # FLOP/s, not tokens/s: among shapes of different size, the smaller is always
            # faster in tokens; what the machine does best is what spends the budget best
            band.sort(key=lambda t: (-round(self._flops_per_s(t), 3), t[0]))
            ranked = band
        else:
            tried.sort(key=lambda t: t[0])
            ranked = tried
            best = ranked[0]
            below = max((t for t in tried if t[1] < r), key=lambda t: t[1], default=None)
            above = min((t for t in tried if t[1] > r), key=lambda t: t[1], default=None)
            sides = " and ".join(
                f"{t[2].label()} ({_short(t[2].count(kind))} parameters) {t[1]:.3g}"
                for t in (below, above)
                if t is not None
            )
            if below is not None and above is not None:
                why = "no shape lies between them"
            elif above is None:
                why = "every shape tried, the smallest included, gets fewer in this budget"
            else:
                why = "every shape tried gets more: the budget or corpus allows no larger model"
            note = (
                f"cannot keep {r:g} tokens per parameter within {RATIO_TOLERANCE - 1:.0%}: "
                f"the nearest shapes give {sides} ({why}); {best[2].label()} is used"
            )
            if below is not None and above is not None:
                lo_n, hi_n = sorted((below[2].count(kind), above[2].count(kind)))
                between = [
                    (t[2].shape, t[4] or self.batch_for(t[3]))
                    for t in tried
                    if lo_n < t[2].count(kind) < hi_n
                ]
        best = ranked[0]
        return [t[2] for t in ranked], best[3], best[4], note, between

    def _flops_per_s(self, tried: tuple) -> float:
        """Achieved FLOP/s, in units of 1e9, of a (miss, ratio, candidate, tokens, batch)."""
        c, tokens, batch = tried[2], tried[3], tried[4]
        rate = self.calib.rate(c.shape, batch or self.batch_for(tokens))
        return rate.tokens_per_s * c.flops_per_token / 1e9

    def _ranked(self, alloc: Allocation) -> list[Candidate]:
        """Shapes near the rule's target, fastest (measured tokens/s) first."""
        batch = self.batch_for(alloc.tokens)
        return sorted(
            near_equal(alloc.params, alloc.count, self.T, self.V),
            key=lambda c: -self.calib.rate(c.shape, batch).tokens_per_s,
        )

    def _fit_time(self, rule, alloc: Allocation, seconds: float):
        """Shape and tokens for a wall-clock budget, true to the rule at measured speed.

        The search for the compute budget used smooth estimates; a real shape runs faster
        or slower, so the tokens that fill the time change, and with them the compute, and
        the rule's N for that compute. Iterate N -> fastest shape -> tokens in the time ->
        compute -> N until the shape repeats, keeping the shape closest to the rule's N for
        what it spends. The batch follows the rule's tokens, not the measured speed, so a run
        near a batch boundary does not flip between two batches' rates.
        """
        best, seen = None, set()
        for _ in range(6):
            ranked, batch = self._ranked(alloc), self.batch_for(alloc.tokens)
            shape = ranked[0].shape
            tokens = self._tokens_for_time(shape, batch, seconds)
            if alloc.max_tokens is not None:
                tokens = min(tokens, alloc.max_tokens)
            implied = rule.allocate(max(tokens, 1.0) * ranked[0].flops_per_token, self.ctx)
            miss = abs(math.log(ranked[0].count(alloc.count) / implied.params))
            if best is None or miss < best[0]:
                best = (miss, (alloc, ranked, tokens, batch))
            if shape in seen:
                break
            seen.add(shape)
            alloc = implied
        return best[1]

    @staticmethod
    def _budget_share(plan: RulePlan, budget: Budget) -> str:
        if budget.kind == "tokens":
            return ""
        used = plan.flops if budget.kind == "flops" else plan.estimate.elapsed_s
        return f", using {used / budget.value:.0%} of the budget"

    def _tokens_for_time(self, shape: Shape, batch: int, seconds: float) -> float:
        """The most tokens whose run, evaluation and checkpoints included, fits ``seconds``."""
        rate = self.calib.rate(shape, batch)

        def elapsed(tokens: float) -> float:
            steps = max(1, int(tokens // (batch * self.T)))
            est = estimate_run(self.T, batch, steps, rate, self.val_windows, self.corpus.data_bytes)
            return est.elapsed_s

        return solve_increasing(elapsed, seconds, MIN_BATCH * self.T, 1e16)

    def finish(self, plan: RulePlan, rule, tokens: float, batch: int | None = None) -> None:
        """Batch (the heuristic's unless given), steps, epochs, LR, cost and time of ``plan``
        training its candidate shape on ``tokens`` tokens."""
        cand, T = plan.candidate, self.T
        b = batch or self.batch_for(tokens)
        steps = int(tokens // (b * T))
        windows = self.corpus.windows(T)
        plan.batch_size, plan.steps = b, steps
        plan.tokens = steps * b * T
        samples = steps * b
        if samples > windows:
            plan.epochs = math.ceil(samples / windows * 1e4) / 1e4  # RepeatedSampler's pool fits
            plan.unique_tokens = math.ceil(samples / plan.epochs) * T
            plan.notes.append(f"repeats the corpus {plan.epochs:.2f} times")
        else:
            plan.epochs, plan.unique_tokens = 1.0, plan.tokens
        plan.flops = plan.tokens * cand.flops_per_token
        plan.lr = learning_rate(cand.non_embedding)
        rate = self.calib.rate(cand.shape, b)
        plan.estimate = estimate_run(
            cand.shape.seq_len, b, max(steps, 1), rate, self.val_windows, self.corpus.data_bytes
        )
        counts = {"total": cand.total, "non_embedding": cand.non_embedding}
        if steps >= 1:
            plan.pred_loss = rule.predict_loss(counts, plan.tokens, plan.unique_tokens)
        if steps < MIN_STEPS and cand.shape != smallest(T, self.V).shape:
            need = MIN_STEPS * b * T
            plan.problem = (
                f"the budget trains this model ({cand.shape.n_layer} layers, d_model "
                f"{cand.shape.d_model}) for only {steps} steps of {b} sequences of {T} tokens, "
                f"fewer than {MIN_STEPS}; give it at least "
                f"{need * cand.flops_per_token:.2g} FLOPs ({need:,} tokens), or a smaller model."
            )
        elif steps < MIN_STEPS:
            plan.problem = self._too_small(tokens)
        elif plan.epochs > MAX_EPOCHS:
            plan.problem = (
                f"the corpus of {self.corpus.train_tokens:,} tokens is too small for this budget: "
                f"the {rule.name} rule would repeat it {plan.epochs:,.0f} times, past "
                f"{MAX_EPOCHS} where more repetition is worth almost nothing (Muennighoff et al. "
                "2023); prepare more data or lower the budget."
            )

    def _too_small(self, tokens: float) -> str:
        low = smallest(self.T, self.V)
        need = MIN_STEPS * MIN_BATCH * self.T
        if self.ctx.unique_tokens < need and tokens >= self.ctx.unique_tokens:
            return (
                f"the corpus holds only {self.ctx.unique_tokens:,.0f} usable tokens, fewer than "
                f"{MIN_STEPS} steps of {MIN_BATCH} sequences of {self.T}; prepare more data or "
                "lower --seq-len."
            )
        rate = self.calib.rate(low.shape, MIN_BATCH)
        est = estimate_run(
            low.shape.seq_len, MIN_BATCH, MIN_STEPS, rate, self.val_windows, self.corpus.data_bytes
        )
        return (
            f"the budget cannot train even the smallest model (1 layer, d_model {low.shape.d_model}) "
            f"for {MIN_STEPS} steps of {MIN_BATCH} sequences of {self.T} tokens; give at least "
            f"{need * train_flops_per_token(low.shape):.2g} FLOPs, {need:,} tokens or "
            f"{format_seconds(est.elapsed_s)}."
        )

    # -- all rules, calibrating as needed ----------------------------------------------------

    def _plan_or_problem(self, rule, budget: Budget) -> RulePlan:
        try:
            return self.plan(rule, budget)
        except UserError as exc:  # shown as this rule's problem; raised if it is the chosen
            return RulePlan(rule.name, rule.source, rule.count, problem=str(exc))

    def plan_all(self, rules: list, budget: Budget, chosen: str) -> dict[str, RulePlan]:
        """Plans for every rule. Calibrates until each plan's leading shapes are measured:
        the chosen rule's MEASURE_CHOSEN fastest near-equal shapes, the others' fastest."""
        try:
            return self._plan_all(rules, budget, chosen)
        finally:
            close = getattr(self.calib, "close", None)
            if close is not None:
                close()  # measuring is over: what it holds goes back

    def _plan_all(self, rules: list, budget: Budget, chosen: str) -> dict[str, RulePlan]:
        measured: set[tuple[Shape, int]] = set()  # once a plan: a busy point stays provisional
        for _ in range(MAX_ROUNDS):
            plans = {rule.name: self._plan_or_problem(rule, budget) for rule in rules}
            if not self.calib.allow_measure:
                return plans
            todo: list[tuple[Shape, int]] = []
            for name, p in plans.items():
                if p.problem:
                    continue
                k = MEASURE_CHOSEN if name == chosen else MEASURE_OTHERS
                wanted = [(c.shape, p.batch_size) for c in p.contenders[:k]]
                if name == chosen:
                    wanted += p.between
                for shape, b in wanted:
                    pair = (shape, b)
                    if not self.calib.has(shape, b) and pair not in todo and pair not in measured:
                        todo.append(pair)
            if not todo:
                return plans
            mine = plans.get(chosen)
            if mine is not None and not mine.problem and mine.shape is not None:
                # measuring takes no more memory than the planned run's micro-batch
                micro = mine.batch_size // grad_accum(mine.batch_size, self.T, self.V)
                self.calib.max_activation_bytes = activation_bytes(mine.shape, micro)
            # The smallest model first, then plan again: before anything is measured the
            # estimates are rough, and a first guess that is too large would be timed (and
            # its memory taken) for nothing. Small models reach a lower FLOP/s, so plans
            # approach the measured rate from below, and with them the memory bound.
            shape, b = min(todo, key=lambda pair: (activation_bytes(pair[0], 1), pair[1]))
            measured.add((shape, b))
            self.calib.measure(shape, b)
        return {rule.name: self._plan_or_problem(rule, budget) for rule in rules}
