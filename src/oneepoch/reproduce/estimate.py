"""What a job will buy and cost before it runs (`oneepoch reproduce --dry-run`).

Every run of the plan with its shape, parameters, tokens, tokens per parameter and steps,
and for the runs that are trained the time this machine's measured throughput predicts
(``oneepoch.plan.calibrate``: the shapes the cache lacks are measured first, at most 30 s in
all; what is left unmeasured is interpolated). The estimate is the planner's
(``oneepoch.plan.estimate``) plus what interleaving adds: each segment after the first
resumes from a checkpoint and takes an untimed warm-up step.
"""

from __future__ import annotations

from oneepoch.flops import param_counts
from oneepoch.plan.estimate import estimate_run
from oneepoch.reproduce.experiments import RunSpec
from oneepoch.reproduce.job import tokens_per_step
from oneepoch.reproduce.presets import Preset


def job_rows(job: dict, preset: Preset, calib) -> list[dict]:
    """One row per run of the job (per seed), trained or read from a longer run."""
    plan = job["plan"]
    vocab = plan["corpus"]["vocab_size"]
    seq = preset.seq_len
    val_windows = max(1, preset.eval_tokens // seq)
    segments = 1 if job.get("sequential") else preset.segments
    rows = []
    for key, raw in plan["runs"].items():
        spec = RunSpec(**raw)
        shape = spec.shape(seq, vocab)
        batch = tokens_per_step(preset, spec) // seq
        params = param_counts(shape)["total"]
        tokens = spec.steps * batch * seq
        row = {
            "run": key,
            "role": spec.role,
            "shape": spec.label,
            "params": params,
            "steps": spec.steps,
            "batch": batch,
            "tokens": tokens,
            "tokens_per_param": tokens / params,
            "epochs": spec.epochs,
            "dropout": spec.dropout,
            "read_from": spec.prefix_of,
            "seconds": None,
        }
        if spec.prefix_of is None:
            if calib.allow_measure and not calib.has(shape, batch):
                calib.measure(shape, batch)
            rate = calib.rate(shape, batch)
            est = estimate_run(seq, batch, spec.steps, rate, val_windows, 0, preset.eval_every)
            resumes = (segments - 1) * (rate.checkpoint_s + rate.step_s)
            row.update(seconds=est.elapsed_s + resumes, train_seconds=est.train_s)
            row["source"] = rate.source + (" on a busy machine" if rate.busy else "")
        rows.append(row)
    return rows
