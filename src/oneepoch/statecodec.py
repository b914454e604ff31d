"""Training state as data: a nested value split into its tensors (for safetensors) and a
JSON document that holds everything else, and joined back.

A checkpoint's state (optimizer moments and hyperparameters, the loss accumulator, counters,
the run's config) used to be pickled, and unpickling a file someone else wrote can run any
code. Here the JSON side holds only dicts, lists, strings, numbers, booleans and null; the
few other things a state holds are tagged objects that name their kind:

    {"__tensor__": "t3"}          the tensor stored under key "t3" in the safetensors file
    {"__tuple__": [...]}          a tuple (AdamW's betas), so it comes back as one
    {"__float__": "nan"}          a non-finite float (plain JSON has none)
    {"__items__": [[k, v], ...]}  a dict whose keys are not all plain strings

Anything else (an object, a function, a set) cannot be written: ``split`` raises TypeError,
so a state that would need code to come back is found when it is saved, not when loaded.
"""

from __future__ import annotations

import json
import math

import torch

_TAGS = ("__tensor__", "__tuple__", "__float__", "__items__")


def split(state) -> tuple[dict[str, torch.Tensor], object]:
    """(tensors by key, the JSON-able rest that refers to them)."""
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()

    def encode(value):
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            if t.numel() and t.data_ptr() in seen:  # safetensors refuses shared memory
                t = t.clone()
            if t.numel():
                seen.add(t.data_ptr())
            key = f"t{len(tensors)}"
            tensors[key] = t
            return {"__tensor__": key}
        if value is None or isinstance(value, (bool, int, str)):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else {"__float__": repr(value)}
        if isinstance(value, tuple):
            return {"__tuple__": [encode(v) for v in value]}
        if isinstance(value, list):
            return [encode(v) for v in value]
        if isinstance(value, dict):
            if all(isinstance(k, str) and k not in _TAGS for k in value):
                return {k: encode(v) for k, v in value.items()}
            return {"__items__": [[encode(k), encode(v)] for k, v in value.items()]}
        raise TypeError(f"a checkpoint cannot hold {type(value).__name__!r} values")

    return tensors, encode(state)


def join(plain, tensors: dict[str, torch.Tensor]):
    """The state ``split`` took apart; ValueError when the document is not one it wrote."""

    def decode(value):
        if isinstance(value, list):
            return [decode(v) for v in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((tag, inner),) = value.items()
            if tag == "__tensor__":
                if not isinstance(inner, str) or inner not in tensors:
                    raise ValueError(f"state.json refers to a tensor {inner!r} that is not stored")
                return tensors[inner]
            if tag == "__tuple__" and isinstance(inner, list):
                return tuple(decode(v) for v in inner)
            if tag == "__float__" and inner in ("nan", "inf", "-inf"):
                return float(inner)
            if tag == "__items__" and isinstance(inner, list):
                if not all(isinstance(p, list) and len(p) == 2 for p in inner):
                    raise ValueError("state.json has a malformed __items__ entry")
                return {_hashable(decode(k)): decode(v) for k, v in inner}
        if any(k in _TAGS for k in value):
            raise ValueError(f"state.json has a malformed tagged value {sorted(value)}")
        return {k: decode(v) for k, v in value.items()}

    return decode(plain)


def dumps(plain) -> bytes:
    return (json.dumps(plain, indent=1, allow_nan=False) + "\n").encode()


def loads(data: bytes):
    return json.loads(data.decode("utf-8"), parse_constant=_no_constant)


def _hashable(key):
    if isinstance(key, (list, dict)):
        raise ValueError("state.json has a dict key that is a list or an object")
    return key


def _no_constant(name: str):
    raise ValueError(f"state.json holds {name}, which JSON does not have")
