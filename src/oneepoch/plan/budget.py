"""Reading ``--budget``: FLOPs (``3e15``), wall-clock (``20min``, ``8h``) or tokens (``50M tokens``)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from oneepoch.errors import UserError
from oneepoch.units import format_seconds, parse_count, parse_duration

KINDS = ("flops", "seconds", "tokens")
_NUMBER = r"([0-9_]*\.?[0-9]+(?:e[+-]?[0-9]+)?)"
_TOKENS = re.compile(rf"\s*{_NUMBER}\s*([kmbgt]?)\s*(?:tok|toks|token|tokens)\s*")
# A bare number is FLOPs; an SI prefix needs the unit ("3PFLOPs"), so "20m" stays a duration.
_FLOPS = re.compile(rf"\s*{_NUMBER}\s*(?:([kmgtpe]?)\s*flops?)?\s*")
_SI = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "p": 1e15, "e": 1e18}


@dataclass(frozen=True)
class Budget:
    kind: str  # one of KINDS
    value: float
    text: str

    def describe(self) -> str:
        if self.kind == "flops":
            return f"{self.value:.3g} FLOPs"
        if self.kind == "tokens":
            return f"{self.value:,.0f} tokens"
        return f"{format_seconds(self.value)} wall-clock"


def parse_budget(text: str) -> Budget:
    """'3e15' or '3PFLOPs' -> FLOPs; '20min', '8h', '90s' -> seconds; '50M tokens' -> tokens."""
    raw = str(text)
    low = raw.strip().lower()
    if low.startswith("-"):
        raise UserError(f"the budget must be positive, got {raw!r}.")
    if m := _TOKENS.fullmatch(low):
        value, kind = float(parse_count(m.group(1) + m.group(2), "token count")), "tokens"
    elif m := _FLOPS.fullmatch(low):
        value, kind = float(m.group(1).replace("_", "")) * _SI[m.group(2) or ""], "flops"
    else:
        try:
            value, kind = parse_duration(low), "seconds"
        except UserError:
            raise UserError(
                f"cannot read budget {raw!r}; write FLOPs (3e15), a wall-clock time (20min, 8h) "
                "or tokens (50M tokens)."
            ) from None
    if not math.isfinite(value):
        raise UserError(
            f"the budget must be a finite amount, got {raw!r}; write FLOPs (3e15), a wall-clock "
            "time (20min, 8h) or tokens (50M tokens)."
        )
    if not value > 0:
        raise UserError(f"the budget must be positive, got {raw!r}.")
    return Budget(kind, value, raw)
