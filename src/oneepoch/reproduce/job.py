"""The reproduce job: its plan in OUT/job.json, its runs as a queue, its outputs.

Runs that are compared by wall-clock train round robin (oneepoch.runqueue): each run
advances by 1/K of its steps, then the next run, and so on (``until_step`` pauses and exact
resume continues), so a burst of load elsewhere on the machine lands on all of them instead
of on one. A kill at any moment leaves every finished run complete and the others
resumable: the same command again skips what is complete and continues the rest.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from oneepoch.atomic import write_atomic
from oneepoch.data.dataset import dataset_fingerprint, read_manifest
from oneepoch.errors import UserError
from oneepoch.flops import train_flops_per_token
from oneepoch.reproduce.experiments import RunSpec, plan_job, trained
from oneepoch.reproduce.jobdir import JobDir
from oneepoch.reproduce.presets import Preset

JOB_FORMAT = "oneepoch-reproduce"
# What may not change between invocations on one output folder.
FIXED = ("preset", "data_fingerprint", "epochs")


def open_job(
    out: Path, preset: Preset, data: Path, seeds: int, epochs, rules=None, write: bool = True
) -> dict:
    """The job's plan, checked against OUT/job.json when it exists (its fixed settings must
    match); written there unless ``write`` is False (``--dry-run`` only shows it)."""
    from oneepoch.plan.planner import corpus_of_dataset

    corpus = corpus_of_dataset(data)
    spec = {
        "format": JOB_FORMAT,
        "version": 1,
        "preset": preset.name,
        "data": str(data.resolve()),
        "data_fingerprint": dataset_fingerprint(read_manifest(data)),
        "epochs": [float(e) for e in (epochs or preset.epochs)],
        "seeds": seeds,
    }
    path = JobDir(out).job
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


def run_config(preset: Preset, data: Path, spec: RunSpec, seed: int) -> dict:
    """The trainer's settings for one run, as the sections of config.toml (the dict
    ``RunConfig.from_dict`` reads and ``QueuedRun.config`` carries): the preset's baseline
    with the run's changes.

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
        # the job fits every curve itself once the runs are done; a re-fitting worker beside
        # the compared runs would only take CPU from them
        "forecast": {"live": False},
    }


def _unless(value, default):
    return default if value is None else value


def tokens_per_step(preset: Preset, spec: RunSpec) -> int:
    return _unless(spec.batch_size, preset.batch_size) * preset.seq_len


def job_queue(job: dict, out: Path, preset: Preset, data: Path, sequential: bool, show: bool):
    """The job's runs as a queue (oneepoch.runqueue): seed after seed, the runs of a seed
    interleaved in the preset's segments unless ``sequential``."""
    from oneepoch.runqueue import QueuedRun, RunQueue

    vocab, folder = job["plan"]["corpus"]["vocab_size"], JobDir(out)
    runs = []
    for seed in range(job["seeds"]):
        for spec in trained(job["plan"]).values():  # the others: these runs' first steps
            per_token = train_flops_per_token(spec.shape(preset.seq_len, vocab))
            runs.append(
                QueuedRun(
                    name=folder.run_name(seed, spec.key),
                    out=folder.run(seed, spec.key).path,
                    config=run_config(preset, data, spec, seed),
                    steps=spec.steps,
                    flops=per_token * tokens_per_step(preset, spec) * spec.steps,
                    group=seed,
                )
            )
    segments = 1 if sequential else preset.segments
    return RunQueue("reproduce", out, runs, segments, show=show)


def run_job(
    out: Path,
    preset: Preset,
    data: Path,
    seeds: int,
    epochs=None,
    rules=None,
    *,
    launch,
    sequential: bool = False,
    show: bool = True,
) -> dict[str, Path] | None:
    """Plan the job (or continue the one in ``out``), train what is left of it through
    ``launch`` (oneepoch.launch), then write results.json and the report; returns their
    paths, or None on a node other than node 0 (it lent its ranks; the report is on node
    0). Raises runqueue.Stopped on a signal."""
    say = (lambda *_: None) if not show else (lambda m: print(m, file=sys.stderr))
    if launch.node_rank > 0:
        from oneepoch.runqueue import RunQueue

        launch.run(RunQueue("reproduce", out, []))
        say(f"node {launch.node_rank}: done; the runs and the report are on node 0")
        return None
    job = open_job(out, preset, data, seeds, epochs, rules)
    job["sequential"] = sequential
    queue = job_queue(job, out, preset, data, sequential, show)
    per_seed = len(trained(job["plan"]))
    say(
        f"reproduce --preset {preset.name}: {len(queue.runs)} runs ({per_seed} per seed x "
        f"{seeds} seed{'s' if seeds > 1 else ''}) on {data} -> {out}"
    )
    how = "one after another" if sequential else f"interleaved in {queue.segments} segments"
    say(f"placement: {launch.describe()}; the runs of a seed {how}")
    outcome = launch.run(queue)
    if outcome.complete_before:
        say(
            f"{len(outcome.complete_before)} run(s) were already complete and were not trained again"
        )
    say("fitting and writing the report")
    return write_outputs(out, job)


def write_outputs(out: Path, job: dict) -> dict[str, Path]:
    """results.json, then the report built from it."""
    from oneepoch.reproduce.report import write_report
    from oneepoch.reproduce.results import compute_results, load_job_runs, write_results

    folder = JobDir(out)
    runs = load_job_runs(folder, job)
    results = compute_results(folder, job, runs)
    write_results(folder.results, results)
    return {"results": folder.results, **write_report(folder, results, job, runs)}


def summary_text(paths: dict[str, Path]) -> str:
    """What a finished job prints: a line per claim, and where the report is."""
    from oneepoch.reproduce.report import claim_lines
    from oneepoch.reproduce.verdicts import Claim

    results = json.loads(paths["results"].read_text())
    report = f"report: {paths['html']} (and {paths['md'].name}, {paths['results'].name})"
    return "\n".join([*claim_lines([Claim.from_dict(c) for c in results["claims"]]), report])


def prepare_builtin(data: Path) -> None:
    """The built-in corpus, prepared into ``data`` (for a job on it when it is absent)."""
    from oneepoch.data.inspect import format_summary, summarize
    from oneepoch.data.prepare import prepare

    print(f"== preparing the built-in corpus into {data}", file=sys.stderr)
    prepare(["builtin"], data, progress=lambda m: print(f"prepare: {m}", file=sys.stderr))
    print(format_summary(summarize(data)), file=sys.stderr)
