"""oneepoch's training throughput when other CPU-bound trainings share its cores.

Scenarios, each in fresh processes started together, each process training for
``--seconds`` (its first steps untimed):

    alone                    oneepoch alone; and the competitor alone (its quiet rate)
    + 1 oneepoch             two oneepoch trainings (each its own 2-thread process)
    + 1 plain PyTorch        oneepoch next to a plain eager PyTorch training loop
    + 2 plain PyTorch        oneepoch next to two of them
    ... with spinning waits  the same with libgomp's default waiting (spin, then sleep) for
                             oneepoch instead of its passive-wait default: what that buys

oneepoch runs through its CLI (``oneepoch train --time``), its rate read from run.json
(median tokens/s over logging intervals, evaluation excluded). The plain PyTorch loop is
benchmarks/throughput.py's nanoGPT-style baseline in float32 with libgomp's default
waiting (torch imported before anything of oneepoch's), i.e. what a program that knows
nothing of this does. Every rate is also given as a share of the same program's quiet rate.

    python benchmarks/contention.py                    # 40 s per scenario, ~6 min
    python benchmarks/contention.py --seconds 20 --shape 4,4,256

Run it on an otherwise idle machine: the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def plain_loop(args: argparse.Namespace) -> None:
    """The competitor: a plain fp32 PyTorch training loop for ``--seconds``; prints tok/s."""
    import torch  # first: libgomp as any PyTorch program gets it

    sys.path.insert(0, str(HERE))
    from throughput import baseline_model

    n_layer, n_head, d = (int(v) for v in args.shape.split(","))
    torch.manual_seed(1)
    model = baseline_model(n_layer, n_head, d, args.seq_len, args.vocab)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, args.vocab, (args.batch_size, args.seq_len + 1))
    times, end = [], None
    for i in range(10**9):
        t0 = time.perf_counter()
        loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:  # untimed warm-up steps
            times.append(time.perf_counter() - t0)
            end = end or time.perf_counter() + args.seconds
            if time.perf_counter() > end:
                break
    print(json.dumps({"tokens_per_s": args.batch_size * args.seq_len / statistics.median(times)}))


def oneepoch_cmd(args: argparse.Namespace, data: Path, out: Path) -> list[str]:
    n_layer, n_head, d = args.shape.split(",")
    return [
        *[sys.executable, "-m", "oneepoch", "train", "--data", str(data), "--out", str(out)],
        *["--time", f"{args.seconds}s", "--n-layer", n_layer, "--n-head", n_head],
        *["--d-model", d, "--seq-len", str(args.seq_len), "--batch-size", str(args.batch_size)],
        *["--schedule", "constant", "--log-every", "5", "--eval-every", "100000"],
        *["--eval-tokens", str(4 * args.seq_len), "--dtype", args.dtype, "--quiet"],
    ]


def scenario(args, data: Path, workdir: Path, plain: int, oneepochs: int, env_extra: dict):
    """Start ``oneepochs`` oneepoch trainings and ``plain`` plain loops together; their rates."""
    procs = []
    for i in range(oneepochs):
        out = workdir / f"run-{time.monotonic_ns()}-{i}"
        env = {**os.environ, **(env_extra if i == 0 else {})}
        cmd = oneepoch_cmd(args, data, out)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(("oneepoch", proc, out))
    for _ in range(plain):
        cmd = [sys.executable, __file__, "--plain-loop", *sys.argv[1:]]
        procs.append(("plain", subprocess.Popen(cmd, stdout=subprocess.PIPE), None))
    rates = []
    for kind, proc, out in procs:
        stdout, stderr = proc.communicate(timeout=20 * args.seconds + 600)
        if proc.returncode != 0:
            raise SystemExit(f"a {kind} process failed:\n{(stderr or b'').decode()[-2000:]}")
        if kind == "oneepoch":
            info = json.loads((out / "run.json").read_text())
            rates.append((kind, info["tokens_per_s"], info["slowed_by_load"]["share_of_time"]))
        else:
            rates.append((kind, json.loads(stdout.decode().splitlines()[-1])["tokens_per_s"], None))
    return rates


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=int, default=40, help="training time of every process")
    p.add_argument("--shape", default="2,2,128", help="n_layer,n_head,d_model (the demo's class)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"))
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--plain-loop", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.plain_loop:
        plain_loop(args)
        return

    sys.path.insert(0, str(HERE))
    from throughput import make_dataset

    workdir = Path(tempfile.mkdtemp(prefix="oneepoch-contention-"))
    data = make_dataset(workdir / "data", args.vocab, 8 << 20)
    print(f"# {os.cpu_count()} cores; load average before: {os.getloadavg()[0]:.2f}")
    # Untimed: oneepoch's first run on this shape times its step for --dtype auto (cached),
    # which must not happen inside a scenario.
    scenario(argparse.Namespace(**{**vars(args), "seconds": 3}), data, workdir, 0, 1, {})
    # An empty OMP_WAIT_POLICY makes libgomp warn and keep its default (spin, then sleep),
    # which is what oneepoch's PASSIVE default replaces; "ACTIVE" would spin forever.
    spinning = {"OMP_WAIT_POLICY": ""}
    plan = [
        ("oneepoch alone", 0, 1, {}),
        ("plain PyTorch alone", 1, 0, {}),
        ("oneepoch + 1 oneepoch", 0, 2, {}),
        ("oneepoch + 1 plain PyTorch", 1, 1, {}),
        ("oneepoch + 2 plain PyTorch", 2, 1, {}),
        ("oneepoch (spinning waits) alone", 0, 1, spinning),
        ("oneepoch (spinning waits) + 1 plain PyTorch", 1, 1, spinning),
    ]
    results = []
    for name, plain, oneepochs, env in plan:
        rates = scenario(args, data, workdir, plain, oneepochs, env)
        results.append({"scenario": name, "rates": rates, "load_after": os.getloadavg()[0]})
        print(f"  {name}: " + ", ".join(f"{k} {r:,.0f} tok/s" for k, r, _ in rates), flush=True)
    quiet = {
        "oneepoch": results[0]["rates"][0][1],
        "plain": results[1]["rates"][0][1],
        "spinning": results[5]["rates"][0][1],
    }
    print(
        f"\nshape {args.shape}, seq {args.seq_len}, batch {args.batch_size}, vocab {args.vocab}, "
        f"dtype {args.dtype}; {args.seconds} s per process; rates are medians over the run"
    )
    print(
        "| scenario | oneepoch tok/s | share of its quiet rate | slowed share (run.json) "
        "| competitors tok/s (share of quiet) |"
    )
    print("|---|---|---|---|---|")
    for row in results:
        own = [r for r in row["rates"] if r[0] == "oneepoch"]
        others = row["rates"][1:] if own else row["rates"]
        base = quiet["spinning"] if "spinning" in row["scenario"] else quiet["oneepoch"]
        first = own[0] if own else None
        comp = ", ".join(
            f"{r:,.0f} ({r / quiet['oneepoch' if k == 'oneepoch' else 'plain']:.0%})"
            for k, r, _ in others
        )
        print(
            f"| {row['scenario']} | {f'{first[1]:,.0f}' if first else '-'} "
            f"| {f'{first[1] / base:.0%}' if first else '-'} "
            f"| {f'{first[2]:.0%}' if first else '-'} | {comp or '-'} |"
        )
    print(f"# load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))


if __name__ == "__main__":
    main()
