"""How well each learning-curve form predicts a run's final validation loss from its start.

For every run directory: fit the evaluations within the first ``--use-first`` (0.3) of the
run's tokens, exactly as ``oneepoch fit RUN --use-first 0.3 --predict-at FINAL`` does, and
print each form's relative error against the run's own final validation loss, whether
the form's interval covers it, and which form ``oneepoch fit`` recommends. A summary over
runs gives the median and largest absolute error per form, for constant-LR and decaying
runs separately.

    python benchmarks/extrapolation.py RUN_DIR...                 # runs made anywhere
    python benchmarks/extrapolation.py --train runs/extrap        # train the reference set
                                                                  # first (~60 min, 2 cores)

``--train DIR`` trains the reference set below on the built-in corpus (prepared on first
use) with ``oneepoch train``, skipping runs that are already complete, then measures them.
It needs the trainer (torch); measuring existing runs needs only the analysis package.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

# name: oneepoch train flags (the n_head default is 2). "const" runs keep the LR flat after
# warm-up (the paper's setting), "cosine"/"linear" decay it to 10% of the peak. These are
# the runs behind the table in docs/analysis.md (~60 min on 2 CPU cores, one at a time).
_DEMO = "--tokens 2M --n-layer 2 --d-model 128 --lr 2e-3 --warmup-steps 50"
REFERENCE_RUNS = {
    "const-demo-s0": f"{_DEMO} --schedule constant --seed 0",
    "const-demo-s1": f"{_DEMO} --schedule constant --seed 1",
    "const-demo-s3": f"{_DEMO} --schedule constant --seed 3",
    "const-demo-s2-dense": f"{_DEMO} --schedule constant --seed 2 --eval-every 8",
    "const-2x64-1M": "--tokens 1M --n-layer 2 --d-model 64 --lr 3e-3 --schedule constant",
    "const-4x128-4M": "--tokens 4M --n-layer 4 --n-head 4 --d-model 128 --lr 1e-3 "
    "--schedule constant",
    "const-2x96-5M": "--tokens 5M --n-layer 2 --d-model 96 --lr 2e-3 --schedule constant "
    "--batch-size 32 --seed 1",
    "const-3x128-3M": "--tokens 3M --n-layer 3 --d-model 128 --lr 6e-4 --schedule constant "
    "--seed 2",
    "const-2x128h4-3M": "--tokens 3M --n-layer 2 --n-head 4 --d-model 128 --lr 1e-3 "
    "--schedule constant --seed 4 --batch-size 24",
    "cosine-demo-s0": f"{_DEMO} --schedule cosine --seed 0",
    "cosine-demo-s1": f"{_DEMO} --schedule cosine --seed 1",
    "cosine-2x64-1M": "--tokens 1M --n-layer 2 --d-model 64 --lr 3e-3 --schedule cosine",
    "cosine-4x128-4M": "--tokens 4M --n-layer 4 --n-head 4 --d-model 128 --lr 1e-3 "
    "--schedule cosine",
    "cosine-2x128h4-3M": "--tokens 3M --n-layer 2 --n-head 4 --d-model 128 --lr 1e-3 "
    "--schedule cosine --seed 4 --batch-size 24",
    "linear-demo-s3": f"{_DEMO} --schedule linear --seed 3",
    # Trained after the forecast's rules were chosen on the runs above: a fresh check.
    "late-const-seq64": "--tokens 2M --n-layer 2 --d-model 128 --seq-len 64 --batch-size 32 "
    "--lr 1.5e-3 --schedule constant --seed 7",
    "late-const-3x96h4-3M": "--tokens 3M --n-layer 3 --n-head 4 --d-model 96 --lr 2e-3 "
    "--schedule constant --seed 8",
    "late-const-demo-s5": f"{_DEMO} --schedule constant --seed 5",
    "late-const-lr4e-3-wu100": "--tokens 2M --n-layer 2 --d-model 128 --lr 4e-3 "
    "--warmup-steps 100 --schedule constant --seed 9",
    "late-cosine-3x96h4-3M": "--tokens 3M --n-layer 3 --n-head 4 --d-model 96 --lr 2e-3 "
    "--schedule cosine --seed 8",
}


def train_reference(out: Path, data: Path) -> list[Path]:
    oneepoch = [sys.executable, "-m", "oneepoch.cli"]
    if not (data / "manifest.json").is_file():
        subprocess.run(
            [*oneepoch, "prepare", "--source", "builtin", "--out", str(data)], check=True
        )
    runs = []
    for name, flags in REFERENCE_RUNS.items():
        run = out / name
        info = run / "run.json"
        done = info.is_file() and json.loads(info.read_text()).get("status") == "completed"
        if not done:
            if run.exists():
                raise SystemExit(f"{run} exists but is not complete; delete it and rerun.")
            print(f"== training {name}: {flags}", flush=True)
            cmd = [*oneepoch, "train", "--data", str(data), "--out", str(run), "--quiet"]
            subprocess.run([*cmd, *flags.split()], check=True)
        runs.append(run)
    return runs


def measure(run_dir: Path, use_first: float, n_boot: int) -> dict:
    from oneepoch.analysis.lr_schedule import LRSchedule
    from oneepoch.analysis.runfit import fit_run
    from oneepoch.analysis.runs import load_run

    run = load_run(run_dir)
    log = run.lr_log()
    kind = "constant" if log is None or LRSchedule(*log).constant else "decaying"
    final = run.evals["val_loss"][-1]
    rf = fit_run(run, use_first=use_first, n_boot=n_boot)
    pred = rf.predict_at(float(run.evals["tokens"][-1]))
    estimates = {**pred["forms"], "forecast": pred["forecast"]}
    return {
        "run": str(run_dir),
        "kind": kind,
        "n_fit_points": rf.settings["n_fit_points"],
        "final_val_loss": float(final),
        "relative_error": {name: est["value"] / final - 1 for name, est in estimates.items()},
        "interval_covers": {name: _covers(est, final) for name, est in estimates.items()},
        "forecast_weights": pred["forecast"]["weights"],
    }


def _covers(est: dict, value: float) -> bool:
    low = -np.inf if est["ci_low"] is None else est["ci_low"]
    high = np.inf if est["ci_high"] is None else est["ci_high"]
    return bool(low <= value <= high)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="*", type=Path, metavar="RUN_DIR")
    p.add_argument("--train", type=Path, metavar="DIR", help="train the reference set here first")
    p.add_argument("--data", type=Path, default=Path("data/builtin"), help="for --train")
    p.add_argument("--use-first", type=float, default=0.3)
    p.add_argument("--bootstrap", type=int, default=200)
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the results here")
    args = p.parse_args(argv)
    runs = list(args.runs)
    if args.train:
        runs += train_reference(args.train, args.data)
    if not runs:
        p.error("give run directories or --train DIR")

    from oneepoch.errors import UserError

    results = []
    for run in runs:
        try:
            results.append(measure(run, args.use_first, args.bootstrap))
        except UserError as exc:
            print(f"skipped {run}: {exc}")
    if not results:
        return 1
    forms = list(results[0]["relative_error"])
    print(f"final validation loss predicted from the first {args.use_first:.0%} of each run")
    print(f"{'run':<24} {'kind':<9} {'pts':>3} " + " ".join(f"{f:>17}" for f in forms))
    for r in results:
        cells = []
        for f in forms:
            mark = "" if r["interval_covers"][f] else "!"
            cells.append(f"{r['relative_error'][f]:+.2%}{mark:<1}".rjust(17))
        name = Path(r["run"]).name[:24]
        print(f"{name:<24} {r['kind']:<9} {r['n_fit_points']:>3} " + " ".join(cells))
    print("! the 90% interval misses the final loss; forecast: what `oneepoch fit` forecasts")
    for kind in ("constant", "decaying"):
        group = [r for r in results if r["kind"] == kind]
        if not group:
            continue
        print(f"{kind} LR ({len(group)} runs): median | max absolute error, interval coverage")
        for f in forms:
            errs = np.abs([r["relative_error"][f] for r in group])
            covered = sum(r["interval_covers"][f] for r in group)
            print(f"  {f:<17} {np.median(errs):.2%} | {errs.max():.2%}  {covered}/{len(group)}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
