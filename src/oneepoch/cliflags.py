"""Command-line pieces the commands share (torch-free): flags of config settings with their
defaults and help text taken from the config dataclasses, one JSON printer.

A flag of a config setting is declared once, in ``CONFIG_FLAGS``; ``oneepoch train`` takes
all of them as overrides (``None`` unless given), and commands that run or plan training
(``plan``, ``sweep``) take the few they need with the config's default.
"""

from __future__ import annotations

import argparse
import json
import sys

from oneepoch.config import DEVICES, DTYPES, PARALLEL, SCHEDULES, RunConfig

# flag -> (section.key, help). The default is appended to the help from the dataclasses
# ("{default}" places it), unless the help says what the default means itself.
CONFIG_FLAGS: dict[str, tuple[str, str]] = {
    "--n-layer": ("model.n_layer", "transformer blocks"),
    "--n-head": ("model.n_head", "attention heads; must divide --d-model"),
    "--d-model": ("model.d_model", "residual stream width"),
    "--seq-len": ("model.seq_len", "context length in tokens"),
    "--dropout": (
        "model.dropout",
        "dropout probability (default {default:g}: one epoch needs none)",
    ),
    "--epochs": (
        "data.epochs",
        "{default:g} (default): one pass, no window twice. E > 1: the multi-epoch baseline, "
        "repeating the first budget/E tokens E times, reshuffled each epoch",
    ),
    "--batch-size": (
        "train.batch_size",
        "sequences per optimizer step, summed over ranks and accumulation",
    ),
    "--grad-accum": ("train.grad_accum", "micro-batches per step"),
    "--lr": ("optim.lr", "peak learning rate"),
    "--min-lr-ratio": ("optim.min_lr_ratio", "final LR as a fraction of the peak"),
    "--warmup-steps": ("optim.warmup_steps", "linear warm-up steps (default: 2%% of the run)"),
    "--schedule": (
        "optim.schedule",
        "LR after warm-up: " + ", ".join(SCHEDULES) + " (default {default})",
    ),
    "--weight-decay": ("optim.weight_decay", "AdamW decay of weight matrices"),
    "--grad-clip": ("optim.grad_clip", "clip the gradient norm to this; 0 disables"),
    "--seed": ("train.seed", "seed of initialisation and data order"),
    "--eval-every": (
        "train.eval_every",
        "also evaluate every N steps (default: ~20 evaluations a run, plus log-spaced early ones)",
    ),
    "--eval-tokens": (
        "train.eval_tokens",
        "validation tokens, the same ones at every evaluation",
    ),
    "--log-every": ("train.log_every", "write a metrics line every N steps"),
    "--checkpoint-every": (
        "train.checkpoint_every",
        "checkpoint every N steps (default: ~10 a run)",
    ),
    "--dtype": (
        "train.dtype",
        "{default} (default: bf16 autocast on GPUs with bf16 tensor cores and on CPUs whose "
        "measured bf16 matmuls beat fp32, as with AMX; else float32; what ran is recorded), "
        + " or ".join(d for d in DTYPES if d != "auto"),
    ),
    "--device": (
        "train.device",
        "{default} (default: a CUDA GPU if one is visible, else the CPU), "
        + " or ".join(d for d in DEVICES if d != "auto"),
    ),
    "--parallel": (
        "train.parallel",
        f"under torchrun: {PARALLEL[0]} (default; a model replica per process) or "
        f"{PARALLEL[1]} (FSDP2: parameters, gradients and optimizer state sharded over "
        "processes, for models too big for one device)",
    ),
}


def config_default(setting: str):
    """The default of "section.key" in RunConfig."""
    section, key = setting.split(".")
    return getattr(getattr(RunConfig(), section), key)


def flag_help(flag: str) -> str:
    setting, text = CONFIG_FLAGS[flag]
    value = config_default(setting)
    if "{default" in text:
        return text.format(default=value)
    return text if "default" in text else f"{text} (default {value})"


def add_config_flags(parser: argparse.ArgumentParser, flags, overrides: bool = False) -> None:
    """Declare ``flags`` (keys of CONFIG_FLAGS), dest the setting's key. ``overrides``: the
    default is None (the flag overrides a config file only when given); else the config's."""
    for flag in flags:
        setting, _ = CONFIG_FLAGS[flag]
        value = config_default(setting)
        parser.add_argument(
            flag,
            dest=setting.split(".")[1],
            type=type(value),
            default=None if overrides else value,
            help=flag_help(flag),
        )


def add_option(parser, flag: str, default, text: str, **kw) -> None:
    """A flag whose type and help's "(default X)" come from its ``default``."""
    parser.add_argument(
        flag, type=type(default), default=default, help=f"{text} (default {default:g})", **kw
    )


def print_json(data) -> None:
    """What every command prints with --json."""
    print(json.dumps(data, indent=2), file=sys.stdout)
