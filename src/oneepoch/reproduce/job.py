"""Training the job's runs: interleaved in segments, resumable, with one progress display.

Runs that are compared by wall-clock train round robin: each run advances by 1/K of its
steps, then the next run, and so on (``--until-step`` pauses and exact resume continues),
so a burst of load elsewhere on the machine lands on all of them instead of on one. A kill
at any moment leaves every finished run complete and the others resumable: the same
command again skips what is complete and continues the rest.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from oneepoch.atomic import write_atomic
from oneepoch.data.dataset import dataset_fingerprint, read_manifest
from oneepoch.errors import UserError
from oneepoch.flops import train_flops_per_token
from oneepoch.plan.budget import format_seconds
from oneepoch.reproduce.experiments import RunSpec, plan_job, trained
from oneepoch.reproduce.presets import Preset

JOB_FORMAT = "oneepoch-reproduce"
# What may not change between invocations on one output folder.
FIXED = ("preset", "data_fingerprint", "epochs")


def open_job(
    out: Path, preset: Preset, data: Path, seeds: int, epochs, rules=None, write: bool = True
) -> dict:
    """The job's plan, checked against OUT/job.json when it exists (its fixed settings must
    match); written there unless ``write`` is False (``--plan`` only shows it)."""
    from oneepoch.plan.planner import corpus_from_data

    corpus = corpus_from_data(data)
    spec = {
        "format": JOB_FORMAT,
        "version": 1,
        "preset": preset.name,
        "data": str(data.resolve()),
        "data_fingerprint": dataset_fingerprint(read_manifest(data)),
        "epochs": [float(e) for e in (epochs or preset.epochs)],
        "seeds": seeds,
    }
    path = out / "job.json"
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{path} is damaged; choose another --out.") from None
        if old.get("format") != JOB_FORMAT:
            raise UserError(
                f"{out} holds something other than a reproduce job; choose another --out."
            )
        changed = [k for k in FIXED if old.get(k) != spec[k]]
        if changed:
            what = {"preset": "--preset", "data_fingerprint": "the dataset", "epochs": "--epochs"}
            raise UserError(
                f"{out} holds a job made with other settings ({', '.join(what[k] for k in changed)} "
                f"changed: it was --preset {old.get('preset')} on {old.get('data')}); rerun with "
                "the same settings to continue it, or choose another --out."
            )
    spec["preset_settings"] = preset.to_json()
    spec["plan"] = plan_job(
        preset, corpus.train_tokens, corpus.vocab_size, spec["epochs"], rules or preset.rules
    )
    if write:
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(path, (json.dumps(spec, indent=1) + "\n").encode())
    return spec


def run_dir(out: Path, seed: int, key: str) -> Path:
    return out / "runs" / f"seed{seed}" / key


def trained_dir(out: Path, seed: int, key: str) -> Path:
    """The folder run ``key`` is read from: its own, or the longer run's it begins."""
    plan = json.loads((out / "job.json").read_text())["plan"]
    return run_dir(out, seed, plan["runs"][key].get("prefix_of") or key)


def run_config(preset: Preset, data: Path, spec: RunSpec, seed: int) -> dict:
    """The trainer's settings for one run: the preset's baseline with the run's changes.

    Constant LR after a fixed warm-up, as in the paper: the test loss then follows a power
    law, and a run's first steps do not depend on how long it will be.
    """
    return {
        "model": {
            "n_layer": spec.n_layer,
            "n_head": spec.n_head,
            "d_model": spec.d_model,
            "seq_len": preset.seq_len,
            "dropout": spec.dropout,
        },
        "data": {"path": str(data.resolve()), "epochs": spec.epochs},
        "optim": {
            "lr": preset.lr,
            "schedule": "constant",
            "warmup_steps": _unless(spec.warmup_steps, preset.warmup_steps),
        },
        "train": {
            "batch_size": _unless(spec.batch_size, preset.batch_size),
            "steps": spec.steps,
            "seed": seed,
            "eval_every": preset.eval_every,
            "eval_tokens": preset.eval_tokens,
            "log_every": preset.log_every,
        },
    }


def _unless(value, default):
    return default if value is None else value


def tokens_per_step(preset: Preset, spec: RunSpec) -> int:
    return _unless(spec.batch_size, preset.batch_size) * preset.seq_len


def run_state(path: Path) -> tuple[str, int]:
    """(status, step) from run.json; ("new", 0) before the first segment."""
    try:
        info = json.loads((path / "run.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return ("new", 0) if not (path / "config.toml").exists() else ("running", -1)
    step = (info.get("final") or {}).get("step")
    return info.get("status", "running"), int(step) if isinstance(step, int) else -1


def train_job(job: dict, out: Path, preset: Preset, data: Path, *, sequential: bool, show: bool):
    """Train every run of every seed; returns the number of runs that were already complete."""
    from oneepoch.config import RunConfig
    from oneepoch.train import train

    runs = trained(job["plan"])  # the others are read from these runs' first steps
    vocab = job["plan"]["corpus"]["vocab_size"]
    work = [(seed, spec) for seed in range(job["seeds"]) for spec in runs.values()]
    progress = JobProgress(work, preset, vocab, enabled=show)
    skipped = 0
    for seed, spec in work:
        status, step = run_state(run_dir(out, seed, spec.key))
        progress.at(seed, spec, spec.steps if status == "completed" else step)
    for seed in range(job["seeds"]):
        todo = [s for s in runs.values() if run_state(run_dir(out, seed, s.key))[0] != "completed"]
        skipped += len(runs) - len(todo)
        rounds = 1 if sequential else preset.segments
        for r in range(1, rounds + 1):
            for spec in todo:
                path = run_dir(out, seed, spec.key)
                until = spec.steps if r == rounds else math.ceil(r * spec.steps / rounds)
                status, step = run_state(path)
                if status == "completed" or step >= until:
                    continue
                cfg = RunConfig.from_dict(run_config(preset, data, spec, seed), "reproduce")
                progress.starting(seed, spec, until)
                began = time.perf_counter()
                train(
                    cfg,
                    path,
                    resume=(path / "config.toml").exists(),
                    show_progress=False,
                    until_step=None if until >= spec.steps else until,
                )
                progress.finished(seed, spec, until, time.perf_counter() - began)
    progress.close()
    return skipped


class JobProgress:
    """One line for the whole job: runs done / total, the current run, the job's ETA.

    The ETA uses each run's measured seconds per step once it has trained a segment, and
    before that the FLOPs of its steps at the job's measured seconds per FLOP.
    """

    def __init__(self, work, preset: Preset, vocab: int, enabled: bool = True):
        self.enabled, self.tty = enabled, sys.stderr.isatty()
        self.preset = preset
        self.flops = {
            (seed, s.key): train_flops_per_token(s.shape(preset.seq_len, vocab))
            * tokens_per_step(preset, s)
            for seed, s in work
        }
        self.total_steps = {(seed, s.key): s.steps for seed, s in work}
        self.done_steps = dict.fromkeys(self.total_steps, 0)  # where each run stands
        self.trained = dict.fromkeys(self.total_steps, 0)  # steps trained by this invocation
        self.seconds = dict.fromkeys(self.total_steps, 0.0)  # ... and the time they took
        self.started = time.perf_counter()

    def at(self, seed: int, spec: RunSpec, step: int) -> None:
        self.done_steps[(seed, spec.key)] = max(0, step)

    def starting(self, seed: int, spec: RunSpec, until: int) -> None:
        key = (seed, spec.key)
        done = sum(self.done_steps[k] >= self.total_steps[k] for k in self.total_steps)
        self._show(
            f"reproduce: {done}/{len(self.total_steps)} runs done; seed {seed} {spec.key} "
            f"to step {until}/{spec.steps}; job ETA {format_seconds(self.eta()) if self.eta() is not None else '?'}"
            f" (elapsed {format_seconds(time.perf_counter() - self.started)})",
            key,
        )

    def finished(self, seed: int, spec: RunSpec, until: int, seconds: float) -> None:
        key = (seed, spec.key)
        self.seconds[key] += seconds
        self.trained[key] += until - self.done_steps[key]
        self.done_steps[key] = until

    def eta(self) -> float | None:
        spent = sum(self.seconds.values())
        flops_done = sum(self.flops[k] * self.trained[k] for k in self.flops)
        if spent <= 0 or flops_done <= 0:
            return None
        per_flop = spent / flops_done
        left = 0.0
        for k, total in self.total_steps.items():
            remaining = total - self.done_steps[k]
            if self.trained[k] > 0:
                left += remaining * self.seconds[k] / self.trained[k]
            else:
                left += remaining * self.flops[k] * per_flop
        return left

    def _show(self, text: str, _key) -> None:
        if not self.enabled:
            return
        if self.tty:
            sys.stderr.write("\r\x1b[2K" + text[:200])
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")
