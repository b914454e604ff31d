"""What the live forecast of `oneepoch train` costs: training throughput with and without it,
and the time one re-fit takes.

Runs with the live forecast and without it (`--no-forecast`) train the same model on the same
data, alternately (A B A B ...), so load elsewhere on the machine lands on both. Reported per
arm: the training throughput (run.json's tokens_per_s: the median tokens/s between log lines
on the training clock, evaluation and checkpoints excluded) and the elapsed time of the whole
`train` call (everything included: evaluation, checkpoints, waiting for re-fits). Then one
re-fit (``live_forecast.forecast_record``, the worker's whole job) timed on synthetic runs
of 100 and 500 evaluations, median of --repeats.

    /work/wt/cpu.sh --quiet python benchmarks/live_forecast.py [--data data/builtin]
        [--pairs 3] [--steps 300] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def train_once(data: Path, out: Path, steps: int, live: bool) -> dict:
    from oneepoch.config import RunConfig
    from oneepoch.train import train

    cfg = RunConfig.from_dict(
        {
            # the tiny preset's baseline shape, evaluated about 20 times a run
            "model": {"n_layer": 2, "n_head": 2, "d_model": 128, "seq_len": 128},
            "data": {"path": str(data.resolve())},
            "optim": {"lr": 2e-3, "schedule": "constant", "warmup_steps": steps // 10},
            "train": {"batch_size": 16, "steps": steps, "eval_every": max(1, steps // 20)},
            "forecast": {"live": live},
        }
    )
    start = time.perf_counter()
    info = train(cfg, out, show_progress=False)
    elapsed = time.perf_counter() - start
    lines = (out / "metrics.jsonl").read_text().splitlines()
    forecasts = sum('"kind": "forecast"' in line for line in lines)
    return {"tokens_per_s": info["tokens_per_s"], "elapsed_s": elapsed, "forecasts": forecasts}


def time_refit(evaluations: int, repeats: int) -> float:
    """Median seconds of one re-fit at the last evaluation but one of a synthetic run with
    ``evaluations`` evaluations (warm-up 2%, 0.5% noise, every one of them fitted)."""
    from oneepoch.analysis.synthetic import power_law, write_run
    from oneepoch.live_forecast import forecast_record

    steps = 20 * evaluations
    warmup = steps // 50
    with tempfile.TemporaryDirectory() as tmp:
        run = write_run(
            Path(tmp) / "run",
            power_law(2.0, 400.0, 0.3),
            total_steps=steps,
            eval_every=20,
            log_every=20,
            noise=0.005,
            warmup_steps=warmup,
            lr=lambda s: 1e-3 * np.minimum(np.asarray(s, dtype=float) / warmup, 1.0),
            eval_steps=np.arange(20, steps + 1, 20),
        )
        seconds = []
        for _ in range(repeats):
            began = time.perf_counter()
            record = forecast_record(run, steps - 20, 2 * steps, target_loss=2.5)
            seconds.append(time.perf_counter() - began)
        assert record is not None and record["n_points"] > 0.8 * evaluations
    return statistics.median(seconds)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("data/builtin"))
    p.add_argument("--pairs", type=int, default=3, help="runs per arm, alternating (default 3)")
    p.add_argument("--steps", type=int, default=300, help="steps per run (default 300)")
    p.add_argument("--repeats", type=int, default=3, help="timings of one re-fit (default 3)")
    p.add_argument("--json", type=Path, metavar="OUT")
    args = p.parse_args(argv)

    arms: dict[str, list[dict]] = {"with": [], "without": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.pairs):
            order = ("with", "without") if i % 2 == 0 else ("without", "with")
            for arm in order:
                out = Path(tmp) / f"{arm}-{i}"
                arms[arm].append(train_once(args.data, out, args.steps, arm == "with"))
    refits = {n: time_refit(n, args.repeats) for n in (100, 500)}

    print(f"{args.pairs} runs per arm, alternating, {args.steps} steps each (2x2x128, batch 16)")
    for arm, runs in arms.items():
        tps = [r["tokens_per_s"] for r in runs]
        wall = [r["elapsed_s"] for r in runs]
        print(
            f"  {arm:<8} live forecast: {statistics.median(tps):>8,.0f} tok/s "
            f"[{min(tps):,.0f}-{max(tps):,.0f}], elapsed {statistics.median(wall):6.1f} s "
            f"[{min(wall):.1f}-{max(wall):.1f}], {runs[0]['forecasts']} forecasts a run"
        )
    tps = {arm: statistics.median(r["tokens_per_s"] for r in runs) for arm, runs in arms.items()}
    wall = {arm: statistics.median(r["elapsed_s"] for r in runs) for arm, runs in arms.items()}
    print(
        f"  with / without: throughput {tps['with'] / tps['without']:.3f}x, "
        f"elapsed {wall['with'] / wall['without']:.3f}x"
    )
    for n, seconds in refits.items():
        print(f"  one re-fit at {n} evaluations: {seconds:.2f} s (median of {args.repeats})")
    if args.json:
        args.json.write_text(json.dumps({"arms": arms, "refit_s": refits}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
