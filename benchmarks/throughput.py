"""Training throughput of oneepoch against a plain eager PyTorch GPT of the same shape.

The baseline is written here, nanoGPT-style and independent of oneepoch's model and loop:
its own modules, ``torch.optim.AdamW`` with default settings, ``clip_grad_norm_``, batches
built in advance. It starts from the same weights and sees the same batches at the same
(constant) learning rate as oneepoch, so after N identical steps the losses should agree:
exactly up to float reordering in fp32, within bf16 rounding otherwise. The baseline runs in
fp32 (``--baseline-dtype``), or in bf16 under autocast, as a plain PyTorch program on a GPU
would; ``--device cuda`` measures both on one GPU.

oneepoch is measured through its real trainer (``oneepoch.train.train``: data reading and
prefetch, logging, evaluation excluded by its clock). Each measurement runs in a fresh
process; the first ``--warmup`` steps are excluded, and the figure reported is the median
over ``--repeats`` runs, interleaved so that a burst of load elsewhere does not land on one
configuration only. The load average is printed: on a shared machine, read it with them.
Each program waits for OpenMP work as it would by itself: the baseline imports torch first
(libgomp's default) and keeps glibc's malloc thresholds, oneepoch sets its passive waiting
and keeps freed memory (oneepoch/__init__.py). ``--dtypes
auto`` shows what the trainer's default picks.

    python benchmarks/throughput.py                          # default shapes, 3 repeats
    python benchmarks/throughput.py --shapes 4,4,256 --steps 40 --repeats 5 --json out.json
    python benchmarks/throughput.py --make-data DIR --vocab 50304 --tokens 50M  # data only
    python benchmarks/throughput.py --device cuda --baseline-dtype bfloat16 --dtypes bfloat16 \
        --shapes 12,12,768 --seq-len 1024 --vocab 50304       # GPT-2 small on a GPU

Shapes are n_layer,n_head,d_model; --seq-len, --batch-size and --vocab apply to all.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------------------------------
# Data: a learnable synthetic corpus (random "phrases" of 8 tokens drawn from a fixed table)


def make_dataset(out: Path, vocab: int, tokens: int, seed: int = 0) -> Path:
    """A oneepoch dataset directory of ``tokens`` synthetic tokens (5% validation)."""
    from oneepoch.data.shards import ShardWriter, dtype_for_vocab

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    # Zipf-like token frequencies, as in text: the loss falls within a few steps (unigram
    # entropy ~7.5 nats at vocab 8192, against ln 8192 = 9.0 at the start), then more slowly.
    freq = 1.0 / (np.arange(vocab) + 10.0)
    phrases = rng.choice(vocab, size=(4 * vocab, 8), p=freq / freq.sum())
    dtype = dtype_for_vocab(vocab)
    splits = {}
    for name, n in [("train", tokens - tokens // 20), ("val", tokens // 20)]:
        writer = ShardWriter(out / f"{name}_00000.bin", dtype)
        for start in range(0, n, 1 << 22):  # in pieces: bounded memory for large corpora
            count = min(1 << 22, n - start)
            picks = rng.integers(0, len(phrases), size=math.ceil(count / 8))
            writer.write(phrases[picks].reshape(-1)[:count].astype(dtype))
        splits[name] = {"tokens": n, "documents": 1, "shards": [writer.close()]}
    manifest = {
        "format": "oneepoch-dataset",
        "version": 1,
        "dtype": np.dtype(dtype).name,
        "tokenizer": {
            "kind": "synthetic",
            "file": None,
            "sha256": hashlib.sha256(f"phrases-{vocab}-{seed}".encode()).hexdigest(),
            "vocab_size": vocab,
            "eot_id": vocab - 1,
        },
        "splits": splits,
        "sources": [{"spec": "synthetic phrases", "kind": "synthetic", "documents": 1}],
        "stats": {},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out


# ---------------------------------------------------------------------------------------
# The baseline: a minimal nanoGPT-style GPT and loop, plain eager fp32


def baseline_model(n_layer: int, n_head: int, d: int, seq_len: int, vocab: int):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_attn = nn.Linear(d, 3 * d)
            self.c_proj = nn.Linear(d, d)

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = self.c_attn(x).split(d, dim=2)
            q, k, v = (z.view(b, t, n_head, d // n_head).transpose(1, 2) for z in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.c_proj(y.transpose(1, 2).contiguous().view(b, t, d))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.attn = nn.LayerNorm(d), Attention()
            self.ln_2 = nn.LayerNorm(d)
            self.c_fc, self.c_proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.c_proj(F.gelu(self.c_fc(self.ln_2(x))))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(seq_len, d)
            self.h = nn.ModuleList(Block() for _ in range(n_layer))
            self.ln_f = nn.LayerNorm(d)
            self.lm_head = nn.Linear(d, vocab, bias=False)
            self.lm_head.weight = self.wte.weight  # tied

        def forward(self, idx, targets):
            x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
            for block in self.h:
                x = block(x)
            logits = self.lm_head(self.ln_f(x))
            return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))

    return GPT()


def load_oneepoch_weights(baseline, oneepoch_state: dict) -> None:
    """Same starting point: oneepoch's initial weights under the baseline's names."""
    renames = {
        "attn.qkv": "attn.c_attn",
        "attn.proj": "attn.c_proj",
        "mlp.fc": "c_fc",
        "mlp.proj": "c_proj",
        "blocks.": "h.",
    }
    state = {}
    for name, tensor in oneepoch_state.items():
        for old, new in renames.items():
            name = name.replace(old, new)
        state[name] = tensor
    state["lm_head.weight"] = state["wte.weight"]
    baseline.load_state_dict(state)


def run_baseline(spec: dict) -> dict:
    import contextlib

    import torch

    from oneepoch.config import ModelConfig
    from oneepoch.model import GPT as OneEpochGPT
    from oneepoch.sampler import OnePassSampler

    n_layer, n_head, d = spec["shape"]
    t, b, vocab = spec["seq_len"], spec["batch_size"], spec["vocab"]
    torch.manual_seed(spec["seed"])  # as the trainer does, so the initial weights match
    init = OneEpochGPT(ModelConfig(n_layer, n_head, d, t, vocab)).state_dict()
    device = torch.device(spec["device"])
    model = baseline_model(n_layer, n_head, d, t, vocab)
    load_oneepoch_weights(model, init)
    model.to(device)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and not n.startswith("w")]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and not n.startswith("w"))]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
        lr=spec["lr"],
        betas=(0.9, 0.95),
    )
    # The same windows oneepoch's one-pass sampler gives its trainer, read ahead of time.
    shard = Path(spec["data"]) / "train_00000.bin"
    tokens = np.fromfile(shard, dtype=spec["token_dtype"], offset=32)
    sampler = OnePassSampler(len(tokens), t, b, spec["seed"])
    batches = [
        torch.from_numpy(np.stack([tokens[w * t : w * t + t + 1] for w in sampler.windows(s)]))
        .long()
        .to(device)
        for s in range(spec["steps"])
    ]
    # bf16 as a plain PyTorch program gets it: autocast around the forward pass
    dtype = getattr(torch, spec["dtype"])
    mixed = dtype != torch.float32
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    w, n = spec["warmup"], spec["steps"]
    losses = []
    for step, x in enumerate(batches):
        if step == w:  # losses stay on the device: no host sync inside the timed steps
            sync()
            began = time.perf_counter()
        ctx = torch.autocast(device.type, dtype) if mixed else contextlib.nullcontext()
        with ctx:
            loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    sync()
    seconds = time.perf_counter() - began
    return {"tokens_per_s": (n - w) * b * t / seconds, "losses": [x.item() for x in losses]}


# ---------------------------------------------------------------------------------------
# oneepoch, through its trainer


def run_oneepoch(spec: dict) -> dict:
    from oneepoch.config import RunConfig
    from oneepoch.train import train

    n_layer, n_head, d = spec["shape"]
    cfg = RunConfig()
    cfg.update(
        {
            "model": {"n_layer": n_layer, "n_head": n_head, "d_model": d},
            "data": {"path": spec["data"]},
            "optim": {"lr": spec["lr"], "schedule": "constant", "warmup_steps": 0},
            "train": {
                "steps": spec["steps"],
                "batch_size": spec["batch_size"],
                "seed": spec["seed"],
                "log_every": spec["log_every"],
                "eval_tokens": 4 * spec["seq_len"],
                "checkpoint_every": spec["steps"],
                "dtype": spec["dtype"],
                "compile": spec["compile"],
                "device": spec["device"],
            },
        }
    )
    cfg.model.seq_len = spec["seq_len"]
    with tempfile.TemporaryDirectory(prefix="oneepoch-bench-") as tmp:
        info = train(cfg, Path(tmp) / "run", show_progress=False)
        lines = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").open()]
    wall = {x["step"]: x["wall_s"] for x in lines}
    w, n = spec["warmup"], spec["steps"]
    rate = (n - w) * spec["batch_size"] * spec["seq_len"] / (wall[n] - wall[w])
    # The last metrics line holds the mean training loss of the steps since the line before.
    return {
        "tokens_per_s": rate,
        "loss": lines[-1]["train_loss"],
        "loss_from": lines[-2]["step"],
        "dtype": info["dtype"],  # what "auto" resolved to
    }


# ---------------------------------------------------------------------------------------
# Driver


def measure(spec: dict) -> dict:
    """One measurement in a fresh process (no compiled code or allocator state carried over)."""
    env = dict(os.environ)
    if spec["impl"] == "baseline":
        # glibc's own malloc thresholds, as a plain PyTorch program has them: an explicit
        # MALLOC_*_ setting (here glibc's default top pad) makes oneepoch, imported for its
        # initial weights, leave them alone (oneepoch/allocator.py)
        env["MALLOC_TOP_PAD_"] = "131072"
    proc = subprocess.run(
        [sys.executable, __file__, "--one", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=1800,
        env=env,
    )
    if proc.returncode != 0:
        raise SystemExit(f"measurement {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shapes", default="2,2,128;4,4,256", help="n_layer,n_head,d_model;...")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--steps", type=int, default=20, help="identical steps per run")
    p.add_argument("--warmup", type=int, default=5, help="first steps left out of the timing")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--modes", default="eager,compiled")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--device", default="cpu", help="cpu or cuda (one GPU)")
    p.add_argument(
        "--baseline-dtype",
        default="float32",
        help="the baseline's dtype: float32, or bfloat16 under autocast (as on a GPU)",
    )
    p.add_argument(
        "--threads", type=int, default=0, help="torch threads in every run (default: torch's)"
    )
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--make-data", metavar="DIR", help="only write a synthetic dataset to DIR")
    p.add_argument("--tokens", default="4M", help="size of the synthetic dataset (--make-data)")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    for flag, given, known in (
        ("--modes", args.modes, ("eager", "compiled")),
        ("--dtypes", args.dtypes, ("float32", "bfloat16", "auto")),
        ("--baseline-dtype", args.baseline_dtype, ("float32", "bfloat16")),
        ("--device", args.device, ("cpu", "cuda")),
    ):
        unknown = [v for v in given.split(",") if v not in known]
        if unknown:  # a misspelt choice used to run nothing of it, silently
            p.error(f"{flag}: unknown {', '.join(unknown)}; choose from {', '.join(known)}")

    if args.one:
        spec = json.loads(args.one)
        if spec["threads"]:
            import torch

            torch.set_num_threads(spec["threads"])
        run = run_baseline if spec["impl"] == "baseline" else run_oneepoch
        print(json.dumps(run(spec)))
        return
    from oneepoch.units import parse_count

    if args.make_data:
        make_dataset(Path(args.make_data), args.vocab, parse_count(args.tokens, "--tokens"))
        print(f"wrote {args.make_data}")
        return

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from oneepoch.flops import Shape, train_flops_per_token
    from oneepoch.measure.machine import device_name, peak_flops

    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes.split(";")]
    needed = args.steps * args.batch_size * (args.seq_len + 1) * 2
    data = Path(tempfile.mkdtemp(prefix="oneepoch-bench-data-"))
    make_dataset(data, args.vocab, max(needed, 1 << 20))
    token_dtype = "uint16" if args.vocab <= 65535 else "uint32"
    base = ("baseline", args.baseline_dtype, False)
    configs = [base] + [
        ("oneepoch", dt, mode == "compiled")
        for dt in args.dtypes.split(",")
        for mode in args.modes.split(",")
    ]
    device = torch.device(args.device)
    print(f"# {device_name(device)}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    load_before = os.getloadavg()
    print(f"# load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")
    results: dict[tuple, list[dict]] = {}
    for repeat in range(args.repeats):
        for shape in shapes:
            for impl, dtype, compiled in configs:
                spec = {
                    "impl": impl,
                    "shape": shape,
                    "dtype": dtype,
                    "compile": compiled,
                    "seq_len": args.seq_len,
                    "batch_size": args.batch_size,
                    "vocab": args.vocab,
                    "steps": args.steps,
                    "warmup": args.warmup,
                    "log_every": args.warmup,
                    "lr": args.lr,
                    "seed": 0,
                    "data": str(data),
                    "token_dtype": token_dtype,
                    "threads": args.threads,
                    "device": args.device,
                }
                r = measure(spec)
                results.setdefault((shape, impl, dtype, compiled), []).append(r)
                mode = "compiled" if compiled else "eager"
                print(
                    f"  repeat {repeat + 1}/{args.repeats} {shape} {impl} {dtype} {mode}: "
                    f"{r['tokens_per_s']:,.0f} tok/s (load {os.getloadavg()[0]:.2f})",
                    file=sys.stderr,
                )
    load_after = os.getloadavg()
    peaks = {dt: peak_flops(device, dt)["value"] for dt in ("float32", "bfloat16")}
    rows = []
    for shape in shapes:
        fpt = train_flops_per_token(Shape(*shape, args.seq_len, args.vocab))
        base_runs = results[(shape, *base)]
        # The baseline's loss over the same steps as oneepoch's last metrics line.
        since = next(
            r[0]["loss_from"] for k, r in results.items() if k[0] == shape and k[1] != "baseline"
        )
        for r in base_runs:
            r["loss"] = statistics.fmean(r["losses"][since:])
        for (s, impl, dtype, compiled), runs in results.items():
            if s != shape:
                continue
            rate = statistics.median(r["tokens_per_s"] for r in runs)
            ran = runs[0].get("dtype", dtype)  # "auto": what the trainer chose
            # Each repeat's own ratio: the baseline ran minutes apart at most, so a slow
            # drift of the machine's speed cancels in it; their median is the speed-up.
            ratios = [r["tokens_per_s"] / b["tokens_per_s"] for r, b in zip(runs, base_runs)]
            rows.append(
                {
                    "shape": "x".join(map(str, shape)),
                    "impl": impl,
                    "dtype": f"auto: {ran}" if dtype == "auto" else dtype,
                    "mode": "compiled" if compiled else "eager",
                    "tokens_per_s": rate,
                    "spread": [
                        min(r["tokens_per_s"] for r in runs),
                        max(r["tokens_per_s"] for r in runs),
                    ],
                    "mfu": rate * fpt / peaks[ran],
                    "vs_baseline": statistics.median(ratios),
                    "vs_baseline_range": [min(ratios), max(ratios)],
                    f"loss_at_{args.steps}": statistics.median(r["loss"] for r in runs),
                }
            )
    print(
        f"\n{device_name(device)}; seq {args.seq_len}, batch {args.batch_size}, vocab "
        f"{args.vocab}; {args.steps} steps, first {args.warmup} untimed; median of "
        f"{args.repeats} (range); vs baseline: median of each repeat's ratio to the baseline's "
        f"run of that repeat; MFU against the peak of the row's dtype (fp32 "
        f"{peaks['float32'] / 1e9:,.0f}, bf16 {peaks['bfloat16'] / 1e9:,.0f} GFLOP/s: "
        f"{peak_flops(device, 'bfloat16')['source']})"
    )
    print(
        f"| layers x heads x d | impl | dtype | mode | tokens/s | MFU | vs baseline | loss at step {args.steps} |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['shape']} | {r['impl']} | {r['dtype']} | {r['mode']} | {r['tokens_per_s']:,.0f} "
            f"({r['spread'][0]:,.0f}-{r['spread'][1]:,.0f}) | {r['mfu']:.1%} | "
            f"{r['vs_baseline']:.2f}x ({r['vs_baseline_range'][0]:.2f}-"
            f"{r['vs_baseline_range'][1]:.2f}) | {r[f'loss_at_{args.steps}']:.4f} |"
        )
    print(f"# load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"rows": rows, "load_before": load_before, "load_after": load_after}, indent=1
            )
        )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
