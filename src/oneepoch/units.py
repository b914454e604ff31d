"""Human-friendly quantities: parsing token counts ("2M", "1.5e9") and durations ("20min"),
and writing counts (320k) and durations (12.5 min)."""

from __future__ import annotations

import math
import re

from oneepoch.errors import UserError

_SUFFIX = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}
_DURATION = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "d": 86400}


def parse_count(text: str | int | float, what: str = "count") -> int:
    """'2000000', '2M', '2e6', '2_000_000' -> 2000000."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        number = r"\s*(-?)([0-9_]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmbgt]?)\s*"
        match = re.fullmatch(number, text.lower())
        if not match:
            raise UserError(f"cannot read {text!r} as a {what}; write e.g. 2000000, 2M or 2e6.")
        if match.group(1):
            raise UserError(f"a {what} cannot be negative ({text!r}); write e.g. 2M or 2e6.")
        value = float(match.group(2).replace("_", "")) * _SUFFIX[match.group(3)]
    if math.isnan(value):
        raise UserError(f"{text!r} is not a number; give the {what} as e.g. 2M or 2e6.")
    if value >= 2**63:  # inf too
        raise UserError(f"{text!r} is too large a {what}; write e.g. 2M or 2e9.")
    return int(round(value))


def parse_duration(text: str | int | float) -> float:
    """'90', '90s', '20min', '1.5h', '1h30m' -> seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    s = text.strip().lower()
    try:
        return float(s)
    except ValueError:
        pass
    parts = re.findall(r"([0-9]*\.?[0-9]+)\s*([a-z]+)", s)
    if not parts or "".join(f"{n}{u}" for n, u in parts) != s.replace(" ", ""):
        raise UserError(f"cannot read {text!r} as a duration; write e.g. 90s, 20min or 1.5h.")
    total = 0.0
    for number, unit in parts:
        if unit not in _DURATION:
            raise UserError(f"unknown time unit {unit!r} in {text!r}; use s, min or h.")
        total += float(number) * _DURATION[unit]
    return total


def format_count(n: float | None) -> str:
    """A count as people write it (320k, 1.02M, 2.2B); "-" for none."""
    if n is None:
        return "-"
    for size, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= size:
            return f"{n / size:.3g}{suffix}"
    return f"{n:.3g}"


def format_seconds(s: float) -> str:
    """A duration as people say it: 45 s, 12.5 min, 3.20 h."""
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"
