"""`oneepoch train`: flags -> RunConfig -> trainer."""

from __future__ import annotations

import os
import sys

from oneepoch.cliflags import (
    CONFIG_FLAGS,
    add_config_flags,
    add_output_flags,
    flag_help,
    print_json,
)
from oneepoch.errors import UserError

# (flag, section, key, help) of every setting train takes; flags override --config, which
# overrides the defaults (oneepoch.config).
TRAIN_FLAGS = [
    (flag, *setting.split("."), flag_help(flag)) for flag, (setting, _) in CONFIG_FLAGS.items()
]


HELP = "train a GPT on a prepared dataset"
DESCRIPTION = """\
Train a GPT on a dataset made by `oneepoch prepare`, one pass over the data unless --epochs
says otherwise, writing a run directory (config.toml, metrics.jsonl, run.json,
checkpoints/). Give exactly one budget: --tokens, --steps or --time.
"""


def add_arguments(p) -> None:
    p.add_argument("--data", help="dataset directory made by `oneepoch prepare`")
    p.add_argument(
        "--out", required=True, help="run directory to create (or continue with --resume)"
    )
    p.add_argument(
        "--config", help="TOML file of settings (e.g. from `oneepoch plan`); flags override it"
    )
    budget = p.add_argument_group("budget (exactly one)")
    budget.add_argument("--tokens", help="training tokens to process, e.g. 2M or 2e6")
    budget.add_argument("--steps", type=int, help="optimizer steps")
    budget.add_argument("--time", help="training wall-clock, e.g. 600, 90s, 20min, 1h")
    add_config_flags(p, CONFIG_FLAGS, overrides=True)
    p.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="torch.compile the model (compilation is untimed warm-up; pays off on GPUs)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its latest checkpoint, exactly",
    )
    p.add_argument(
        "--until-step",
        type=int,
        help="pause at this step of the planned run (checkpoint written, run.json status "
        "'paused'); --resume continues it exactly",
    )
    forecast = p.add_argument_group("live forecast of the final loss")
    forecast.add_argument(
        "--no-forecast",
        dest="live_forecast",
        action="store_false",
        default=None,
        help="do not re-fit the learning curve while training (by default the progress line, "
        "metrics.jsonl and TensorBoard show the forecast final loss with its 90%% interval)",
    )
    forecast.add_argument(
        "--stop-if-unreachable",
        action="store_true",
        default=None,
        help="stop the run (checkpointed, resumable) when the forecast says --target-loss will "
        "not be reached by the end; off by default",
    )
    forecast.add_argument(
        "--forecast-with",
        metavar="RUN",
        help="a run of the same model and data whose learning rate decayed: under a decaying "
        "schedule the forecast then includes the loss drop the decay still brings (`oneepoch "
        "fit --with`); without it the forecast says it leaves the decay out",
    )
    add_output_flags(p, "the run record (run.json) at the end", progress="progress display")


def overrides_from_args(args) -> dict:
    """Nested {section: {key: value}} of the settings given on the command line."""
    from oneepoch.config import PATH_SETTINGS, absolute_path
    from oneepoch.units import parse_count, parse_duration

    out: dict[str, dict] = {}
    for _flag, section, key, _text in TRAIN_FLAGS:
        value = getattr(args, key)
        if value is not None:
            out.setdefault(section, {})[key] = value
    if args.compile:
        out.setdefault("train", {})["compile"] = True
    for key, value in (
        ("live", args.live_forecast),
        ("stop_if_unreachable", args.stop_if_unreachable),
        ("companion", args.forecast_with),
    ):
        if value is not None:
            out.setdefault("forecast", {})[key] = value
    if args.data:
        out.setdefault("data", {})["path"] = args.data
    for section, key in PATH_SETTINGS:  # relative to where the command runs; recorded absolute
        if out.get(section, {}).get(key):
            out[section][key] = absolute_path(out[section][key])
    if any(getattr(args, b) is not None for b in ("tokens", "steps", "time")):
        # A budget on the command line replaces whatever budget the config file had (that
        # exactly one is given is checked once, with the rest of the config: config.validate).
        out.setdefault("train", {}).update(
            steps=args.steps or 0,
            tokens=parse_count(args.tokens, "token count") if args.tokens is not None else 0,
            time_s=parse_duration(args.time) if args.time is not None else 0.0,
        )
    return out


def run(args) -> int:
    from oneepoch.config import RunConfig, load_config_file
    from oneepoch.train import Interrupted, train

    overrides = overrides_from_args(args)
    is_main = os.environ.get("RANK", "0") == "0"
    cfg = RunConfig()
    if args.config:  # its relative paths are relative to its own folder
        cfg.update(load_config_file(args.config), args.config)
    cfg.update(overrides, "command line")
    if cfg.log.tensorboard:  # said now, not after the model is built (on every rank)
        from oneepoch.tensorboard import check_log_dir, require_tensorboard

        require_tensorboard()
        check_log_dir(cfg.log.tensorboard, args.out)  # before the run directory is made
    if cfg.forecast.companion:  # a run to fit with: said now, not at the first forecast
        from oneepoch.analysis.runs import load_run

        load_run(cfg.forecast.companion)
    if is_main and args.config:
        record_plan(args.config, args.out, args.resume)  # for `oneepoch plan --check RUN`
    try:
        info = train(
            cfg,
            args.out,
            resume=args.resume,
            overrides=overrides,
            show_progress=not args.quiet,
            until_step=args.until_step,
        )
    except Interrupted as exc:
        return interrupted_exit(exc, is_main)
    except UserError:
        if is_main:
            raise  # printed once, by the CLI
        return 2
    if not is_main:
        return 0  # under torchrun rank 0 speaks for the run
    if args.json:
        return print_json(info)
    final = info.get("final", {})
    val = final.get("val_loss")
    if info.get("status") == "stopped":
        print(
            f"stopped at step {final.get('step')}: the live forecast says --target-loss "
            f"{cfg.forecast.target_loss:g} will not be reached by the end; the run is "
            f"checkpointed in {args.out} (continue it with --resume)."
        )
        return 0
    print(
        f"done: {final.get('step')} steps, {final.get('tokens'):,} tokens, "
        f"val_loss {val:.4f}, {info['tokens_per_s']:,.0f} tok/s, MFU {info['mfu']:.1%} "
        f"of {info['peak_flops']['value'] / 1e9:,.0f} GFLOP/s ({info['peak_flops']['dtype']}) -> {args.out}"
        if val is not None
        else f"done -> {args.out}"
    )
    return 0


def record_plan(config: str, out: str, resume: bool = False) -> None:
    """Copy a plan's sidecar (plan.json next to plan.toml) into the run directory as
    plan.json, so `oneepoch plan --check RUN_DIR` finds the predictions the run started
    from. Only into a new run directory or one already holding this run; nothing when the
    config is no plan or the run already has one."""
    import json
    from pathlib import Path

    from oneepoch.plan.planfile import PLAN_FORMAT, sidecar_path
    from oneepoch.rundir import RunDir
    from oneepoch.safefs import open_file

    side, run = sidecar_path(config), Path(out)
    files = RunDir(run)
    target = files.plan
    if not side.is_file() or os.path.lexists(target):
        return
    try:
        if json.loads(side.read_text()).get("format") != PLAN_FORMAT:
            return
    except (OSError, ValueError, AttributeError):
        return
    if files.holds_run() and not resume:
        return  # another run lives there: train refuses it, and so do we
    if not files.holds_run() and run.is_dir() and any(run.iterdir()):
        return  # a folder holding something else: leave it alone
    run.mkdir(parents=True, exist_ok=True)
    with open_file(target, "xb") as f:  # never through a link planted under that name
        f.write(side.read_bytes())


def interrupted_exit(exc, is_main: bool = True, how: str | None = None) -> int:
    """Say how to continue an interrupted run (``how``; default: resume it); the exit status
    is 128 + the signal, as a shell reports a command a signal stopped."""
    if is_main:
        how = how or f"continue with `oneepoch train --data {exc.data} --out {exc.out} --resume`"
        print(f"{exc}; {how}", file=sys.stderr)
    return 128 + exc.signum
