"""Allocation rules: for a compute budget C (training FLOPs), a parameter target and tokens.

Every rule states which parameter count it speaks of: Kaplan et al. (2020) fit non-embedding
parameters; Hoffmann et al. (2022) and Muennighoff et al. (2023), who follow them, count all
parameters. C is always the real cost, ``flops_per_token(N) x D`` from oneepoch.flops (so
the output head, a large share of small models' cost, is paid for), also where a paper
counted 6 N D (see ``Kaplan``).

Published laws were fitted on other corpora and tokenizers: their loss values do not carry
over, so only a law fitted here (``fitted:LAW.json``) predicts a loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from oneepoch.errors import UserError

TOKENS_PER_PARAM = 5.0  # Komatsuzaki's default: one epoch of 5 tokens per parameter

PF_DAY = 1e15 * 86400  # FLOPs in a petaflop/s-day, Kaplan et al.'s compute unit
MAX_EPOCHS = 60  # past ~4 R_D* (Muennighoff: R_D* = 15.4) repetition adds almost nothing

# Muennighoff et al. (2023): their fitted data-constrained law.
MUENNIGHOFF = {
    "E": 1.87,
    "A": 521.0,
    "B": 1488.0,
    "alpha": 0.353,
    "beta": 0.353,
    "R_D_star": 15.39,
    "R_N_star": 5.31,
}
CHINCHILLA_TOKENS_PER_PARAM = 20.0
KAPLAN_N_AT_PF_DAY = 1.3e9  # non-embedding params optimal at C_min = 1 PF-day
KAPLAN_EXPONENT = 0.73

# (params, count kind) -> training FLOPs per token
FlopsPerToken = Callable[[float, str], float]


@dataclass
class Allocation:
    params: float  # target, in the rule's count kind
    count: str  # "total" or "non_embedding"
    tokens: float
    max_tokens: float | None = None  # the rule never trains on more (one epoch)
    data_limited: bool = False


@dataclass
class RuleContext:
    flops_per_token: FlopsPerToken
    unique_tokens: float  # usable unique training tokens of the corpus


def solve_increasing(f: Callable[[float], float], target: float, lo: float, hi: float) -> float:
    """The largest x in [lo, hi] (to ~1e-9 relative) with f(x) <= target, for nondecreasing f,
    by bisection on log x. Returns lo when even f(lo) is above the target."""
    if f(lo) >= target:
        return lo
    if f(hi) <= target:
        return hi
    a, b = math.log(lo), math.log(hi)
    while b - a > 1e-9:
        mid = 0.5 * (a + b)
        if f(math.exp(mid)) <= target:
            a = mid
        else:
            b = mid
    return math.exp(a)


class TokensPerParam:
    """N from C = flops_per_token(N) * r * N: a fixed ratio r of tokens to (all) parameters."""

    count = "total"
    r = 1.0

    def params_for(self, flops: float, ctx: RuleContext) -> float:
        return solve_increasing(
            lambda n: ctx.flops_per_token(n, "total") * self.r * n, flops, 1.0, 1e16
        )

    def predict_loss(self, counts: dict, tokens: float, unique: float) -> float | None:
        return None


class Komatsuzaki(TokensPerParam):
    """One epoch, tokens = r x params (Komatsuzaki 2019; r = 5 by default).

    The corpus is never repeated: when r * N exceeds its unique tokens U, the model shrinks
    to U / r and trains on all of U once, leaving the rest of the budget unspent (the plan
    says how much).
    """

    name = "komatsuzaki"

    def __init__(self, tokens_per_param: float = TOKENS_PER_PARAM):
        if not tokens_per_param > 0:
            raise UserError(f"--tokens-per-param must be positive, got {tokens_per_param}.")
        self.r = tokens_per_param
        self.source = (
            f"Komatsuzaki 2019, One Epoch Is All You Need: one epoch, {self.r:g} tokens per "
            "parameter (all parameters)"
        )

    def allocate(self, flops: float, ctx: RuleContext) -> Allocation:
        n, u = self.params_for(flops, ctx), ctx.unique_tokens
        if self.r * n > u:
            return Allocation(u / self.r, "total", u, max_tokens=u, data_limited=True)
        return Allocation(n, "total", self.r * n, max_tokens=u)


class Chinchilla(TokensPerParam):
    """Compute-optimal per Hoffmann et al. (2022): about 20 tokens per parameter (all
    parameters). Repeats the corpus when it is short.

    The ratio is the paper's headline result (its approaches 1 and 2); the published
    approach-3 constants (E 1.69, A 406.4, B 410.7, alpha 0.34, beta 0.28) are not minimised
    because they imply inconsistent ratios (Besiroglu et al. 2024).
    """

    name = "chinchilla"
    source = "Hoffmann et al. 2022 (Chinchilla): 20 tokens per parameter (all parameters)"
    r = CHINCHILLA_TOKENS_PER_PARAM

    def allocate(self, flops: float, ctx: RuleContext) -> Allocation:
        n = self.params_for(flops, ctx)
        return Allocation(n, "total", self.r * n)


class Kaplan:
    """N_opt = 1.3e9 (C / PF-day)^0.73 non-embedding parameters (Kaplan et al. 2020, sec. 6).

    C is the real budget. Kaplan et al. count C = 6 N D with N non-embedding, which leaves
    out the output head and attention, most of a small model's cost; solving in that
    accounting feeds back (a smaller N makes their C smaller still) and collapses to the
    smallest model, so we apply their fit to the FLOPs actually spent. Tokens are then what
    the budget buys: D = C / flops_per_token(N).
    """

    name = "kaplan"
    count = "non_embedding"
    source = "Kaplan et al. 2020: N = 1.3e9 (C/PF-day)^0.73 (non-embedding parameters)"

    def allocate(self, flops: float, ctx: RuleContext) -> Allocation:
        n = KAPLAN_N_AT_PF_DAY * (flops / PF_DAY) ** KAPLAN_EXPONENT
        return Allocation(n, "non_embedding", flops / ctx.flops_per_token(n, "non_embedding"))

    def predict_loss(self, counts: dict, tokens: float, unique: float) -> float | None:
        return None


class LawRule:
    """Minimise a law L(N, D[, U]) subject to C = flops_per_token(N) * D (analysis package)."""

    count = "total"
    predicts_loss = False

    def __init__(self, law, count: str):
        self.law, self.count = law, count

    def allocate(self, flops: float, ctx: RuleContext) -> Allocation:
        from oneepoch.analysis.scaling import compute_optimal

        unique = ctx.unique_tokens if self.law.form == "data-constrained" else None
        best = compute_optimal(
            self.law, flops, lambda n: ctx.flops_per_token(n, self.count), unique_tokens=unique
        )
        return Allocation(best["params"], self.count, best["tokens"])

    def predict_loss(self, counts: dict, tokens: float, unique: float) -> float | None:
        if not self.predicts_loss:
            return None
        u = unique if self.law.form == "data-constrained" else None
        return float(self.law.predict(counts[self.count], tokens, u))


class DataConstrained(LawRule):
    """Muennighoff et al. (2023): minimise L = E + A / N'^alpha + B / D'^beta, with N', D' the
    effective parameters and data under repetition of the U unique tokens, over N (all
    parameters) at fixed C. With plenty of data it is a Chinchilla-type optimum (1/G^2 ~= 19.5
    tokens per parameter under C = 6 N D); with little it trades epochs against model size.
    """

    name = "data-constrained"
    source = (
        "Muennighoff et al. 2023: effective-data law, R_D* = 15.39, R_N* = 5.31 (all parameters)"
    )

    def __init__(self):
        from oneepoch.analysis.scaling import ScalingLaw

        super().__init__(ScalingLaw("data-constrained", dict(MUENNIGHOFF)), "total")


class Fitted(LawRule):
    """The compute-optimal choice under a law fitted with `oneepoch scaling fit` on this
    corpus and tokenizer, so its predicted loss means something here."""

    predicts_loss = True

    def __init__(self, path: str | Path, count: str = "non_embedding"):
        from oneepoch.analysis.scaling import load_law

        self.path = Path(path)
        super().__init__(load_law(self.path), count)
        self.name = f"fitted:{self.path}"
        self.source = (
            f"{self.law.form} law fitted by `oneepoch scaling fit` ({self.path}), N = "
            f"{count.replace('_', '-')} parameters"
        )


def make_rule(
    spec: str, tokens_per_param: float = TOKENS_PER_PARAM, fitted_count: str = "non_embedding"
):
    """A rule from its command-line name: komatsuzaki, chinchilla, kaplan, data-constrained,
    fitted:LAW.json."""
    if spec == "komatsuzaki":
        return Komatsuzaki(tokens_per_param)
    if spec == "chinchilla":
        return Chinchilla()
    if spec == "kaplan":
        return Kaplan()
    if spec == "data-constrained":
        return DataConstrained()
    if spec.startswith("fitted:"):
        path = spec.split(":", 1)[1]
        if not path:
            raise UserError("--rule fitted: needs a law file, e.g. fitted:law.json.")
        return Fitted(path, fitted_count)
    raise UserError(
        f"unknown rule {spec!r}; choose komatsuzaki, chinchilla, kaplan, data-constrained "
        "or fitted:LAW.json."
    )


PUBLISHED = ("komatsuzaki", "chinchilla", "kaplan", "data-constrained")
