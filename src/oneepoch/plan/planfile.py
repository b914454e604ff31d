"""The plan on disk: ``plan.toml`` (a config ``oneepoch train --config`` runs as is) and its
sidecar ``plan.json`` (the predictions, for ``oneepoch plan --check``).

The trainer rejects unknown config sections, so predictions cannot live in the TOML; the
sidecar sits next to it under the same stem.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from oneepoch.config import ModelConfig, RunConfig, absolute_path, validate
from oneepoch.errors import UserError
from oneepoch.plan.budget import Budget
from oneepoch.plan.calibrate import Calibration
from oneepoch.plan.heuristics import grad_accum
from oneepoch.plan.planner import Corpus, RulePlan, Settings

PLAN_FORMAT = "oneepoch-plan"


def config_of_plan(
    plan: RulePlan, corpus: Corpus, settings: Settings, calib: Calibration
) -> RunConfig:
    """The trainer's config of ``plan``: what plan.toml holds and `oneepoch sweep` trains."""
    s = plan.shape
    cfg = RunConfig(model=ModelConfig(**asdict(s)))
    cfg.data.path = absolute_path(corpus.path)  # recorded absolute: runs from any folder
    cfg.data.epochs = plan.epochs
    cfg.optim.lr = float(f"{plan.lr:.3g}")
    cfg.train.batch_size = plan.batch_size
    cfg.train.grad_accum = grad_accum(plan.batch_size, s.seq_len, s.vocab_size)
    cfg.train.tokens = plan.tokens
    cfg.train.eval_tokens = settings.eval_tokens
    cfg.train.dtype = calib.dtype  # resolved: the dtype the calibration measured
    cfg.train.device = calib.device.type
    validate(cfg)
    return cfg


def sidecar_path(plan_toml: str | Path) -> Path:
    return Path(plan_toml).with_suffix(".json")


def write_plan(
    path: str | Path,
    plans: dict[str, RulePlan],
    chosen: str,
    budget: Budget,
    corpus: Corpus,
    settings: Settings,
    calib: Calibration,
) -> tuple[Path, Path]:
    path = Path(path)
    if path.suffix == ".json":
        raise UserError(f"--out names the TOML plan, e.g. plan.toml, not {path}.")
    plan = plans[chosen]
    cfg = config_of_plan(plan, corpus, settings, calib)
    data = corpus.path or "DATA_DIR"
    header = [
        f"# oneepoch plan: rule {chosen}, budget {budget.text} ({budget.describe()}).",
        f"# Predictions in {sidecar_path(path).name}; compare after the run with "
        "`oneepoch plan --check RUN_DIR`.",
        f"# Run: oneepoch train --data {data} --config {path} --out RUN_DIR",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(header) + cfg.to_toml())
    side = sidecar_path(path)
    side.write_text(
        json.dumps(
            {
                "format": PLAN_FORMAT,
                "version": 1,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "budget": {"kind": budget.kind, "value": budget.value, "text": budget.text},
                "chosen": chosen,
                "prediction": plan.to_json(),
                "config": cfg.to_dict(),
                "rules": {name: p.to_json() for name, p in plans.items()},
                "corpus": {
                    "path": absolute_path(corpus.path),
                    "train_tokens": corpus.train_tokens,
                    "vocab_size": corpus.vocab_size,
                },
                "calibration": calib.machine,
            },
            indent=1,
        )
        + "\n"
    )
    return path, side


def read_plan(path: str | Path) -> dict:
    path = Path(path)
    if path.suffix == ".toml":
        path = sidecar_path(path)
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(
            f"plan file {path} does not exist; write one with `oneepoch plan --out`."
        ) from None
    except (ValueError, UnicodeDecodeError):
        raise UserError(
            f"{path} is not valid JSON; write it again with `oneepoch plan --out`."
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != PLAN_FORMAT:
        raise UserError(f"{path} is not a plan written by `oneepoch plan --out`.")
    return obj
