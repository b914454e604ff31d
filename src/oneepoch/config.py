"""Typed configuration: one small dataclass per component, composed into ``RunConfig``.

Precedence: defaults < ``--config FILE.toml`` < command-line flags. The resolved config
is written to the run directory as ``config.toml``. Each setting's flag and its help are
declared here too (``SETTING_HELP``, ``CONFIG_FLAGS``), for ``oneepoch.cliflags`` and for the
messages that say where a bad setting came from.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oneepoch.errors import UserError
from oneepoch.flops import Shape

SCHEDULES = ("cosine", "linear", "constant")
DTYPES = ("float32", "bfloat16", "auto")
DEVICES = ("auto", "cpu", "cuda")
PARALLEL = ("ddp", "fsdp")
SEED_LIMIT = 2**32  # seeds are 0 .. 2**32 - 1, which every use of a seed accepts

# section.key -> the help of its flag, --key (with "-" for "_"). The default is appended to
# the help from the dataclasses ("{default}" places it), unless the help says what the
# default means itself.
SETTING_HELP: dict[str, str] = {
    "model.n_layer": "transformer blocks",
    "model.n_head": "attention heads; must divide --d-model",
    "model.d_model": "residual stream width",
    "model.seq_len": "context length in tokens",
    "model.dropout": "dropout probability (default {default:g}: one epoch needs none)",
    "data.epochs": "{default:g} (default): one pass, no window twice. E > 1: the multi-epoch "
    "baseline, repeating the first budget/E tokens E times, reshuffled each epoch",
    "train.batch_size": "sequences per optimizer step, summed over ranks and accumulation",
    "train.grad_accum": "micro-batches per step",
    "optim.lr": "peak learning rate",
    "optim.min_lr_ratio": "final LR as a fraction of the peak",
    "optim.warmup_steps": "linear warm-up steps (default: 2%% of the run)",
    "optim.schedule": "LR after warm-up: " + ", ".join(SCHEDULES) + " (default {default})",
    "optim.weight_decay": "AdamW decay of weight matrices",
    "optim.grad_clip": "clip the gradient norm to this; 0 disables",
    "train.seed": "seed of initialisation and data order",
    "train.eval_every": "also evaluate every N steps (default: ~20 evaluations a run, plus "
    "log-spaced early ones)",
    "train.eval_tokens": "validation tokens, the same ones at every evaluation",
    "train.log_every": "write a metrics line every N steps",
    "train.checkpoint_every": "checkpoint every N steps (default: ~10 a run)",
    "train.dtype": "{default} (default: bf16 autocast on GPUs with bf16 tensor cores and on "
    "CPUs whose measured bf16 matmuls beat fp32, as with AMX; else float32; what ran is "
    "recorded), " + " or ".join(d for d in DTYPES if d != "auto"),
    "train.device": "{default} (default: a CUDA GPU if one is visible, else the CPU), "
    + " or ".join(d for d in DEVICES if d != "auto"),
    "train.parallel": f"under torchrun: {PARALLEL[0]} (default; a model replica per process) "
    f"or {PARALLEL[1]} (FSDP2: parameters, gradients and optimizer state sharded over "
    "processes, for models too big for one device)",
    "log.tensorboard": "while training, also write TensorBoard event files (train/val loss, "
    "lr, tokens/s, MFU) into DIR/<run folder name>, for `tensorboard --logdir DIR`; a resumed "
    "run continues its curves; metrics.jsonl stays the record (default: none)",
    "forecast.target_loss": "with the live forecast, show when the run is forecast to reach "
    "this validation loss (step and wall-clock), or that it will not by the end, and warn "
    "once when it becomes unlikely (default: none)",
}
# flag -> (section.key, help), in the order of `oneepoch train --help`.
CONFIG_FLAGS: dict[str, tuple[str, str]] = {
    "--" + setting.split(".")[1].replace("_", "-"): (setting, text)
    for setting, text in SETTING_HELP.items()
}


@dataclass
class ModelConfig:
    """The model's ``flops.Shape`` (its fields, in its order) with the defaults, and dropout.

    Two types because a shape is an immutable key (of calibrations, of the planner's
    candidates) and this is a setting that parsing fills in; ``shape()`` and
    ``ModelConfig(**asdict(shape))`` go between them.
    """

    n_layer: int = 2
    n_head: int = 2
    d_model: int = 128
    seq_len: int = 128
    vocab_size: int = 0  # 0: taken from the dataset
    dropout: float = 0.0  # one-epoch training needs no regularisation (Komatsuzaki 2019)

    def shape(self) -> Shape:
        return Shape(**{f.name: getattr(self, f.name) for f in dataclasses.fields(Shape)})


@dataclass
class DataConfig:
    path: str = ""
    epochs: float = 1.0  # 1: one pass, every window at most once; >1: repeat a smaller subset


@dataclass
class OptimConfig:
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = -1  # -1: 2% of the steps, at least 10 (fewer if the run is shorter)
    schedule: str = "cosine"
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0


@dataclass
class TrainConfig:
    batch_size: int = 16  # global sequences per optimizer step, whatever the number of ranks
    grad_accum: int = 1
    steps: int = 0  # budget: exactly one of steps, tokens, time_s
    tokens: int = 0
    time_s: float = 0.0
    seed: int = 0
    eval_every: int = 0  # 0: about 20 evaluations per run, plus log-spaced early ones
    eval_tokens: int = 32768
    log_every: int = 10
    checkpoint_every: int = 0  # 0: about 10 checkpoints per run
    keep_checkpoints: int = 2
    dtype: str = "auto"  # bf16 autocast where it is faster (hardware.pick_dtype), else fp32
    compile: bool = False
    device: str = "auto"
    parallel: str = "ddp"


@dataclass
class LogConfig:
    tensorboard: str = ""  # a folder: live TensorBoard event files in <it>/<run folder name>


@dataclass
class ForecastConfig:
    """The live forecast of the final loss while training (oneepoch.live_forecast)."""

    live: bool = True
    target_loss: float = 0.0  # 0: none; else say when the run will reach this val loss
    stop_if_unreachable: bool = False  # stop when the forecast says the target is out of reach
    companion: str = ""  # a run of the same setup whose LR decayed (the annealing term)


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    forecast: ForecastConfig = field(default_factory=ForecastConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        import tomli_w

        return tomli_w.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, raw: dict[str, Any], origin: str = "config") -> RunConfig:
        cfg = cls()
        cfg.update(raw, origin)
        return cfg

    def update(self, raw: dict[str, Any], origin: str = "config") -> None:
        """Set values from a nested dict, checking section and key names and types."""
        for section, values in raw.items():
            target = getattr(self, section, None)
            if target is None or not dataclasses.is_dataclass(target):
                known = ", ".join(f.name for f in dataclasses.fields(self))
                raise UserError(f"{origin}: unknown section [{section}]; sections are {known}.")
            if not isinstance(values, dict):
                raise UserError(
                    f"{origin}: {section} is {values!r}, not a table of settings; write them "
                    f"under a [{section}] header, e.g. [{section}] then "
                    f"{dataclasses.fields(target)[0].name} = ..."
                )
            fields = {f.name: f for f in dataclasses.fields(target)}
            for key, value in values.items():
                if key not in fields:
                    raise UserError(
                        f"{origin}: unknown key {section}.{key}; known keys are {', '.join(fields)}."
                    )
                setattr(
                    target,
                    key,
                    _coerce(value, type(getattr(target, key)), f"{section}.{key}", origin),
                )


def _coerce(value: Any, kind: type, name: str, origin: str) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif kind is str and isinstance(value, str):
        return value
    raise UserError(f"{origin}: {name} must be a {kind.__name__}, got {value!r}.")


def load_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        raise UserError(f"config file {p} is a folder; give the path of a TOML file.")
    if not p.is_file():
        raise UserError(f"config file {p} does not exist.")
    try:
        return tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"config file {p} is not valid TOML ({exc}).") from None
    except OSError as exc:
        raise UserError(f"config file {p} cannot be read ({exc.strerror}).") from None


# Settings that name a file or folder. In a config file a relative one is relative to the
# file's folder (not to where `oneepoch` runs); a run's config.toml records them absolute.
PATH_SETTINGS = (("data", "path"), ("log", "tensorboard"), ("forecast", "companion"))


def absolute_path(path: str, base: str | Path | None = None) -> str:
    """``path`` made absolute against ``base`` (default: the current folder); "" stays "".
    Not resolved through symlinks, so the name the user gave stays readable."""
    if not path:
        return path
    path = os.path.expanduser(path)
    if os.path.isabs(path):
        return os.path.normpath(path)
    return os.path.normpath(os.path.join(os.path.abspath(base or os.curdir), path))


def resolve_paths(raw: dict[str, Any], base: str | Path) -> dict[str, Any]:
    """A copy of a config dict whose relative paths (PATH_SETTINGS) are made absolute
    against ``base``, the folder of the file that names them."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for section, key in PATH_SETTINGS:
        values = out.get(section)
        if isinstance(values, dict) and isinstance(values.get(key), str):
            values[key] = absolute_path(values[key], base)
    return out


def load_config_file(path: str | Path) -> dict[str, Any]:
    """A config file (``--config``) with its relative paths resolved against its folder."""
    return resolve_paths(load_toml(path), Path(path).parent)


def validate(cfg: RunConfig) -> None:
    """Reject impossible or inconsistent settings with one clear sentence (the first wrong
    one, in the order below)."""
    _check_finite(cfg)
    _check_shape(cfg.model, cfg.train)
    _check_bounds(cfg.optim, cfg.train)
    _check_choices(cfg.optim, cfg.train)
    _check_budget(cfg)
    _check_forecast(cfg.forecast)
    if cfg.data.epochs > 1 and cfg.train.time_s:
        raise UserError(
            "epochs > 1 needs a steps or tokens budget (not time_s), so the repeated subset can be sized."
        )


def _check_finite(cfg: RunConfig) -> None:
    """NaN passes every comparison and inf most of them: refuse both first, by name."""
    for section in dataclasses.fields(cfg):
        for f in dataclasses.fields(getattr(cfg, section.name)):
            value = getattr(getattr(cfg, section.name), f.name)
            if isinstance(value, float) and not math.isfinite(value):
                setting = f"{section.name}.{f.name}"
                raise UserError(
                    f"{setting} must be a finite number, got {value}; give it a real value "
                    f"({_where(setting)})."
                )


def _check_shape(m: ModelConfig, t: TrainConfig) -> None:
    """The model's sizes and the batch's."""
    for name, value in [
        ("n_layer", m.n_layer),
        ("n_head", m.n_head),
        ("d_model", m.d_model),
        ("seq_len", m.seq_len),
        ("batch_size", t.batch_size),
        ("grad_accum", t.grad_accum),
    ]:
        if value < 1:
            raise UserError(f"{name} must be at least 1, got {value}.")
    if m.d_model % m.n_head:
        raise UserError(
            f"n_head ({m.n_head}) must divide d_model ({m.d_model}); try n_head "
            f"{max(h for h in range(1, m.n_head + 1) if m.d_model % h == 0)}."
        )
    if not 0.0 <= m.dropout < 1.0:
        raise UserError(f"dropout must be in [0, 1), got {m.dropout}.")


def _check_bounds(o: OptimConfig, t: TrainConfig) -> None:
    """Numbers with a least or a range: cadences, the optimizer's settings, the seed."""
    # Settings where 0 or a negative number means nothing (0 is "auto" for the cadences).
    auto = "chosen for the run"
    for setting, value, low, meaning in [
        ("train.eval_tokens", t.eval_tokens, 1, ""),
        ("train.log_every", t.log_every, 1, ""),
        ("train.keep_checkpoints", t.keep_checkpoints, 1, ""),
        ("train.eval_every", t.eval_every, 0, f" (0: {auto})"),
        ("train.checkpoint_every", t.checkpoint_every, 0, f" (0: {auto})"),
        ("optim.warmup_steps", o.warmup_steps, -1, f" (-1: {auto})"),
        ("optim.weight_decay", o.weight_decay, 0, ""),
        ("optim.grad_clip", o.grad_clip, 0, " (0: no clipping)"),
    ]:
        if value < low:
            raise UserError(
                f"{setting} must be at least {low}{meaning}, got {value}; change {_where(setting)}."
            )
    for setting, value in (("optim.beta1", o.beta1), ("optim.beta2", o.beta2)):
        if not 0.0 <= value < 1.0:
            raise UserError(
                f"{setting} must be in [0, 1), got {value}; change it in the --config file."
            )
    check_seed(t.seed, f"train.seed ({_where('train.seed')})")


def _check_choices(o: OptimConfig, t: TrainConfig) -> None:
    """Settings that name one of a few choices, and the learning rate's schedule."""
    if o.schedule not in SCHEDULES:
        raise UserError(f"unknown schedule {o.schedule!r}; choose one of {', '.join(SCHEDULES)}.")
    if o.lr <= 0:
        raise UserError(f"lr must be positive, got {o.lr}.")
    if not 0.0 <= o.min_lr_ratio <= 1.0:
        raise UserError(f"min_lr_ratio must be in [0, 1], got {o.min_lr_ratio}.")
    if t.dtype not in DTYPES:
        raise UserError(f"unknown dtype {t.dtype!r}; choose one of {', '.join(DTYPES)}.")
    if t.device not in DEVICES:
        raise UserError(f"unknown device {t.device!r}; choose one of {', '.join(DEVICES)}.")
    if t.parallel not in PARALLEL:
        raise UserError(
            f"unknown parallel mode {t.parallel!r}; choose one of {', '.join(PARALLEL)}."
        )


def _check_budget(cfg: RunConfig) -> None:
    """Exactly one budget, at least a batch of tokens, whole epochs."""
    m, t = cfg.model, cfg.train
    if t.batch_size % t.grad_accum:
        raise UserError(f"grad_accum ({t.grad_accum}) must divide batch_size ({t.batch_size}).")
    budgets = [b for b in (t.steps, t.tokens, t.time_s) if b]
    if any(b < 0 for b in budgets):
        raise UserError("the budget (train.steps, train.tokens or train.time_s) must be positive.")
    if len(budgets) != 1:
        raise UserError(
            "give exactly one budget: train.steps, train.tokens or train.time_s "
            "(`oneepoch train`: --steps N, --tokens N or --time SECONDS)."
        )
    tokens_per_step = t.batch_size * m.seq_len
    if t.tokens and t.tokens < tokens_per_step:
        raise UserError(
            f"a budget of {t.tokens} tokens is smaller than one batch "
            f"({t.batch_size} x {m.seq_len} = {tokens_per_step} tokens); raise the tokens or lower batch_size."
        )
    if cfg.data.epochs < 1:
        raise UserError(f"epochs must be at least 1, got {cfg.data.epochs}.")


def _check_forecast(f: ForecastConfig) -> None:
    if f.target_loss < 0:
        raise UserError(
            f"target_loss must be a positive loss (or 0 for none), got {f.target_loss}."
        )
    if f.stop_if_unreachable and not f.target_loss:
        raise UserError("--stop-if-unreachable needs a --target-loss to judge by; give one.")
    if f.stop_if_unreachable and not f.live:
        raise UserError("--stop-if-unreachable needs the live forecast; drop --no-forecast.")


def check_seed(seed, name: str) -> None:
    """A seed is a whole number from 0 to SEED_LIMIT - 1 (``name`` says where it was given)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise UserError(f"{name} must be a whole number from 0 to {SEED_LIMIT - 1}, not {seed}.")


def _where(setting: str) -> str:
    flags = [flag for flag, (key, _) in CONFIG_FLAGS.items() if key == setting]
    flags += ["--time"] if setting == "train.time_s" else []
    return f"the flag {flags[0]} or the --config file" if flags else "in the --config file"


def total_steps(cfg: RunConfig) -> int | None:
    """Optimizer steps the budget allows (None for a wall-clock budget)."""
    t = cfg.train
    if t.steps:
        return t.steps
    if t.tokens:
        return max(1, t.tokens // (t.batch_size * cfg.model.seq_len))
    return None
