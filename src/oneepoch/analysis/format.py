"""Estimates as the commands print them (torch-free): a number, a value with its bootstrap
interval, a fitted parameter's line."""

from __future__ import annotations


def format_number(x) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def format_estimate(est) -> str:
    """``value [ci_low, ci_high]`` of an estimate dict (a plain number as it is)."""
    if not isinstance(est, dict):
        return format_number(est)
    if est["ci_low"] is None and est["ci_high"] is None:  # no interval (no bootstrap)
        return format_number(est["value"])
    unbounded = est["ci_high"] is None and est["value"] is not None
    hi = "inf" if unbounded else format_number(est["ci_high"])
    return f"{format_number(est['value'])} [{format_number(est['ci_low'])}, {hi}]"


def format_param(name: str, est: dict) -> str:
    """A fitted parameter: its estimate, standard error, and why it is fixed or tied."""
    se = f"  se {format_number(est['se'])}" if est.get("se") is not None else ""
    why = next((f"  ({est[k]})" for k in ("note", "fixed") if k in est), "")
    tied = f"  (tied to {est['tied']})" if "tied" in est else ""
    return f"  {name:>12} {format_estimate(est)}{se}{why}{tied}"
