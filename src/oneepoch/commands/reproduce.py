"""`oneepoch reproduce`: the paper's experiments on your corpus and machine, and a report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from oneepoch.cliflags import add_launch_flags, add_output_flags, print_json
from oneepoch.errors import UserError

BUILTIN = "data/builtin"
HELP = "run the paper's experiments on a corpus and write a report"
DESCRIPTION = """\
Run the experiments of One Epoch Is All You Need (one epoch vs many, dropout under one
epoch, the power law, size/iteration adjustment, both together) on --data, interleaving the
runs that are compared by wall-clock, and write OUT/report.html, OUT/report.md and
OUT/results.json. Interrupt it at any moment: the same command continues where it stopped.
With --nproc-per-node N every run trains on the N processes of one torchrun job (and on
several nodes with the node options), its batch split over them.
"""


def add_arguments(p) -> None:
    from oneepoch.reproduce.presets import PRESETS

    p.add_argument(
        "--preset",
        default="tiny",
        choices=list(PRESETS),
        help="; ".join(f"{k}: {v.purpose}" for k, v in PRESETS.items()) + " (default tiny)",
    )
    p.add_argument(
        "--data",
        help=f"dataset made by `oneepoch prepare` (default: the built-in corpus in {BUILTIN}, "
        "prepared when absent)",
    )
    p.add_argument("--out", default="reproduce", help="output folder (default ./reproduce)")
    p.add_argument("--seeds", type=int, default=1, help="repeat every run with N seeds (default 1)")
    p.add_argument(
        "--epochs",
        help="epochs of experiment 1's multi-epoch baselines, comma-separated, e.g. 4,10,30 "
        "(default: the preset's)",
    )
    p.add_argument(
        "--law",
        help="a scaling law fitted on this corpus (`oneepoch scaling fit --json LAW.json`): "
        "experiment 4 then also trains the size it makes compute-optimal; a data-constrained "
        "law also predicts experiment 1's speedups and the epochs this corpus affords",
    )
    p.add_argument(
        "--sequential",
        action="store_true",
        help="train the runs one after another instead of interleaved (wall-clock then depends "
        "on the load at each run's time)",
    )
    add_launch_flags(p)
    add_output_flags(
        p,
        "the results (results.json) at the end",
        progress="progress display",
        dry_run="print every run of the job (shape, parameters, tokens, tokens per parameter, "
        "steps, the time this machine's measured throughput predicts, what is left of it) and "
        "where the runs will go, then exit without training",
    )


def run(args) -> int:
    from oneepoch.launch import launch_from_args
    from oneepoch.reproduce.job import prepare_builtin, run_job, summary_text
    from oneepoch.reproduce.presets import get_preset
    from oneepoch.runqueue import Stopped

    preset = get_preset(args.preset)
    if args.seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {args.seeds}.")
    epochs = _parse_epochs(args.epochs) if args.epochs else None
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; choose a folder.")
    launch = launch_from_args(args, "auto")
    data = Path(args.data or BUILTIN)
    if not (data / "manifest.json").is_file():
        if args.data:
            raise UserError(
                f"{data} is not a prepared dataset (no manifest.json); make it with "
                "`oneepoch prepare --out` first."
            )
        prepare_builtin(data)
    if args.law and not Path(args.law).is_file():
        raise UserError(
            f"--law {args.law} does not exist; pass a file from `oneepoch scaling fit --json`."
        )
    rules = (*preset.rules, f"fitted:{Path(args.law).resolve()}") if args.law else None
    if args.dry_run:
        from oneepoch.reproduce.job import open_job

        job = open_job(out, preset, data, args.seeds, epochs, rules, write=False)
        job["sequential"] = args.sequential
        return print_job(job, preset, data, out, launch, args.json)
    try:
        paths = run_job(
            out, preset, data, args.seeds, epochs, rules, launch=launch,
            sequential=args.sequential, show=not args.quiet,
        )  # fmt: skip
    except Stopped as exc:
        print(exc, file=sys.stderr)
        return 128 + exc.signum
    if paths is None:  # a node other than node 0: the report is on node 0
        return 0
    if args.json:
        return print_json(json.loads(paths["results"].read_text()))
    print(summary_text(paths))
    return 0


def print_job(job: dict, preset, data: Path, out: Path, launch, as_json: bool) -> int:
    """``--dry-run``: every run with what it costs here and what is left of it, then the
    totals and where the runs will go; nothing is trained or written."""
    from oneepoch.plan.calibrate import Calibration
    from oneepoch.reproduce.estimate import job_rows
    from oneepoch.units import format_seconds

    calib = Calibration()
    try:
        rows = job_rows(job, preset, calib)
    finally:
        calib.close()
    seeds = job["seeds"]
    for r in rows:
        r["left"] = _left(out, seeds, r["run"]) if r["read_from"] is None else None
    per_seed = sum(r["seconds"] for r in rows if r["seconds"] is not None)
    if as_json:
        return print_json(
            {
                "runs": rows,
                "seeds": seeds,
                "seconds_per_seed": per_seed,
                "placement": launch.describe(),
            }
        )
    trained = [r for r in rows if r["read_from"] is None]
    print(
        f"reproduce --preset {preset.name} on {data}: {len(trained)} runs to train per seed x "
        f"{seeds} seed{'s' if seeds > 1 else ''}"
        + (
            f" ({len(rows) - len(trained)} more read from longer runs' first steps)"
            if len(rows) > len(trained)
            else ""
        )
        + f"; {calib.device.type} {calib.dtype}"
    )
    header = (
        "run",
        "shape",
        "params",
        "steps",
        "batch",
        "tokens",
        "tok/param",
        "epochs",
        "dropout",
        "est. time",
        "left",
    )
    table = [header]
    for r in rows:
        time = (
            format_seconds(r["seconds"])
            if r["seconds"] is not None
            else f"(first steps of {r['read_from']})"
        )
        table.append(
            (r["run"], r["shape"], f"{r['params']:,}", f"{r['steps']:,}", str(r["batch"]),
             f"{r['tokens']:,}", f"{r['tokens_per_param']:.2f}", f"{r['epochs']:g}",
             f"{r['dropout']:g}", time, r["left"] or "")
        )  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    measured = sum(r.get("source") == "measured" for r in trained)
    print(
        f"total: {format_seconds(per_seed * seeds)} ({format_seconds(per_seed)} a seed, "
        "evaluations, checkpoints and resumes included), from this machine's throughput "
        f"({measured} of {len(trained)} shapes measured, the rest interpolated; cached in "
        f"{calib.path}). Dropout's own cost per step (a quarter of a CPU step, little on a "
        "GPU) is not in it, nor fitting and the report (under a minute)."
    )
    how = "one after another" if job["sequential"] else f"interleaved in {preset.segments} segments"
    print(f"placement: {launch.describe()}; the runs of a seed {how}")
    return 0


def _left(out: Path, seeds: int, key: str) -> str:
    """What is left of run ``key`` over the job's seeds: train, done, or resume at a step."""
    from oneepoch.reproduce.jobdir import JobDir

    left = []
    for seed in range(seeds):
        status, step = JobDir(out).run(seed, key).status()
        left.append({"completed": "done", "new": "train"}.get(status, f"resume at {step}"))
    return (
        left[0] if len(set(left)) == 1 else ", ".join(f"seed {i}: {x}" for i, x in enumerate(left))
    )


def _parse_epochs(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(
            f"--epochs takes numbers separated by commas, e.g. 4,10,30; got {text!r}."
        ) from None
    if not values or any(not v > 1 or v != v or v == float("inf") for v in values):
        raise UserError(f"--epochs values must be finite numbers above 1, got {text!r}.")
    return sorted(set(values))
