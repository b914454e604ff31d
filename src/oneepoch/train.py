"""The trainer: composes data, sampler, model, optimizer, schedule and run directory.

The batch at step s is a pure function of (seed, s, dataset), and the random state used
by dropout is re-seeded from (seed, s, rank) every step, so resuming from a checkpoint
reproduces the uninterrupted run exactly. ``batch_size`` is global: each step's windows are
split into ``grad_accum`` micro-batches and each of those over the ranks, so the global
batch, and the one-pass guarantee, do not depend on the number of ranks (see
``oneepoch.distributed``).
"""

from __future__ import annotations

import contextlib
import math
import signal
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from oneepoch import __version__, checkpoint
from oneepoch.config import RunConfig, load_toml, total_steps, validate
from oneepoch.data.dataset import Dataset, Split, open_dataset
from oneepoch.distributed import (
    Ranks,
    clip_grad_norm_,
    full_state,
    grad_sync,
    init_distributed,
    load_full_state,
    parallelize,
)
from oneepoch.errors import UserError
from oneepoch.flops import Shape, param_counts, train_flops_per_token
from oneepoch.hardware import cpu_bf16_is_faster, gpu_supports_bf16, hardware_info, peak_flops
from oneepoch.model import GPT
from oneepoch.prefetch import Prefetcher
from oneepoch.progress import Progress
from oneepoch.rundir import MetricsLog, read_json, write_json
from oneepoch.sampler import OnePassSampler, RepeatedSampler, num_windows
from oneepoch.schedule import lr_at


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; a checkpoint was written."""

    def __init__(self, signum: int, step: int, message: str):
        super().__init__(message)
        self.signum, self.step = signum, step


# ---------------------------------------------------------------------------------------
# Small pieces the loop composes


def pick_device(name: str, ranks: Ranks) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError(
                "--device cuda was asked for but no CUDA GPU is visible; use --device cpu."
            )
        torch.cuda.set_device(ranks.local_rank)
        return torch.device("cuda", ranks.local_rank)
    return torch.device("cpu")


def pick_dtype(name: str, device: torch.device) -> str:
    """The compute dtype: "auto" means bf16 autocast where the hardware is fast at bf16.

    GPUs: bf16 tensor cores (Ampere on). CPUs: measured (once, cached): bf16 only where its
    matmuls clearly beat fp32's, as with AMX.
    """
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bfloat16" if gpu_supports_bf16(device) else "float32"
    return "bfloat16" if cpu_bf16_is_faster() else "float32"


def log_spaced_steps(last: int, per_decade: int = 5) -> set[int]:
    """1, 2, 3, 4, 6, 10, 16, 25, 40, 63, 100, ...: evaluation points across decades."""
    out, k = set(), 0
    while (s := round(10 ** (k / per_decade))) <= last:
        out.add(s)
        k += 1
    return out


def read_windows(split: Split, windows: np.ndarray, seq_len: int) -> torch.Tensor:
    """(n, seq_len + 1) int64 tokens: window i is tokens [i*T, i*T + T + 1)."""
    return torch.from_numpy(np.stack([split.read(int(w) * seq_len, seq_len + 1) for w in windows]))


class TrainClock:
    """Training wall-clock that pauses for evaluation and checkpointing."""

    def __init__(self, device: torch.device, elapsed: float = 0.0):
        self.device, self.elapsed, self._since = device, elapsed, None

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def start(self) -> None:
        self._sync()
        self._since = time.perf_counter()

    def now(self) -> float:
        """Elapsed training time, including the running segment (no device sync)."""
        running = time.perf_counter() - self._since if self._since is not None else 0.0
        return self.elapsed + running

    def stop(self) -> float:
        self._sync()
        if self._since is not None:
            self.elapsed += time.perf_counter() - self._since
            self._since = None
        return self.elapsed


# ---------------------------------------------------------------------------------------
# Run setup


# Where the data lives and how ranks share the model may change between sessions of a run:
# checkpoints do not depend on either.
RESUME_MAY_CHANGE = {"data.path", "train.parallel"}


def resolve_config(base: RunConfig, out: Path, resume: bool, overrides: dict) -> RunConfig:
    """The run's config: the saved one when resuming (flags may not change it)."""
    saved = out / "config.toml"
    if resume and saved.is_file():
        cfg = RunConfig.from_dict(load_toml(saved), str(saved))
        wanted = RunConfig.from_dict(cfg.to_dict())
        wanted.update(overrides, "command line")
        changed = [
            f"{sec}.{k}"
            for sec, values in wanted.to_dict().items()
            for k, v in values.items()
            if cfg.to_dict()[sec][k] != v
            and f"{sec}.{k}" not in RESUME_MAY_CHANGE
            and not (f"{sec}.{k}" == "train.dtype" and v == "auto")  # auto: as resolved before
        ]
        if changed:
            raise UserError(
                f"--resume continues {out} exactly as configured in its config.toml, but the command "
                f"line changes {', '.join(changed)}; drop those flags or start a new run with another --out."
            )
        if overrides.get("data", {}).get("path"):
            cfg.data.path = overrides["data"]["path"]
        if overrides.get("train", {}).get("parallel"):
            cfg.train.parallel = overrides["train"]["parallel"]
        return cfg
    if not resume and (saved.exists() or (out / "metrics.jsonl").exists()):
        raise UserError(
            f"{out} already holds a run; pass --resume to continue it or choose another --out."
        )
    return base


def make_sampler(cfg: RunConfig, data: Dataset, steps: int | None):
    t = cfg.train
    if cfg.data.epochs > 1:
        sampler = RepeatedSampler(
            data.train.num_tokens, cfg.model.seq_len, t.batch_size, t.seed, cfg.data.epochs, steps
        )
    else:
        sampler = OnePassSampler(data.train.num_tokens, cfg.model.seq_len, t.batch_size, t.seed)
        if steps is not None:
            sampler.check_budget(steps)
    return sampler


def build_optimizer(model: GPT, cfg: RunConfig, device: torch.device) -> torch.optim.AdamW:
    o = cfg.optim
    return torch.optim.AdamW(
        model.param_groups(o.weight_decay), lr=o.lr, betas=(o.beta1, o.beta2), fused=True
    )


# ---------------------------------------------------------------------------------------
# The run


def train(
    cfg: RunConfig,
    out: str | Path,
    resume: bool = False,
    overrides: dict | None = None,
    show_progress: bool = True,
    until_step: int | None = None,
) -> dict:
    """Train according to ``cfg`` into run directory ``out``; returns run.json's content.

    ``until_step`` pauses the run there: a checkpoint is written and run.json says "paused";
    ``resume=True`` later continues it exactly (the schedule is the whole run's). Runs that
    are compared by wall-clock train this way in interleaved segments.
    Under torchrun every rank calls this; rank 0 alone reads and writes ``out``.
    """
    out = Path(out)
    auto_kind = "cuda" if torch.cuda.is_available() else "cpu"
    ranks = init_distributed(auto_kind if cfg.train.device == "auto" else cfg.train.device)
    cfg = ranks.from_main(lambda: resolve_config(cfg, out, resume, overrides or {}))
    validate(cfg)
    m, t = cfg.model, cfg.train
    device = pick_device(t.device, ranks)
    # Rank 0 decides (on CPU by measuring, which ranks sharing cores must not do at once);
    # config.toml records what ran, not "auto".
    t.dtype = ranks.from_main(lambda: pick_dtype(t.dtype, device))
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # float32 matmuls on TF32 tensor cores
    if not cfg.data.path:
        raise UserError("no dataset given; pass --data DATA_DIR (made by `oneepoch prepare`).")
    # Rank 0 re-hashes the shards (and reports a mismatch to all); the others check sizes.
    ranks.from_main(lambda: open_dataset(cfg.data.path, verify_checksums=True).path)
    data = open_dataset(cfg.data.path, verify_checksums=False)
    if m.vocab_size and m.vocab_size != data.vocab_size:
        raise UserError(
            f"the config's vocab_size ({m.vocab_size}) does not match the dataset's tokenizer "
            f"({data.vocab_size}); remove vocab_size from the config or use the matching dataset."
        )
    m.vocab_size = data.vocab_size
    steps = total_steps(cfg)
    sampler = make_sampler(cfg, data, steps)
    micro = t.batch_size // t.grad_accum
    if micro % ranks.world_size:
        raise UserError(
            f"the micro-batch ({t.batch_size} / grad_accum {t.grad_accum} = {micro}) must divide "
            f"evenly over {ranks.world_size} ranks; change --batch-size or --grad-accum."
        )
    per_rank = micro // ranks.world_size
    val_windows = min(
        max(1, t.eval_tokens // m.seq_len), num_windows(data.val.num_tokens, m.seq_len)
    )
    if val_windows < 1:
        raise UserError(
            f"the validation split has fewer than {m.seq_len + 1} tokens; prepare with a larger validation split."
        )

    shape = Shape(m.n_layer, m.n_head, m.d_model, m.seq_len, m.vocab_size)
    flops_per_token = train_flops_per_token(shape)
    eval_every = t.eval_every or (max(1, steps // 20) if steps else 100)
    ckpt_every = t.checkpoint_every or (max(1, steps // 10) if steps else 500)
    eval_steps = log_spaced_steps(steps or 10**9)
    tokens_per_step = t.batch_size * m.seq_len

    torch.manual_seed(t.seed)
    model = GPT(m).to(device)
    train_model = parallelize(model, t.parallel, t.compile, device, ranks)
    optimizer = build_optimizer(model, cfg, device)  # after FSDP has sharded the parameters
    start_step, clock_s, metrics_offset = 0, 0.0, None
    # Training-loss accounting: `acc` sums this rank's per-step losses on the device (no sync
    # per step); at each log line its mean over ranks is folded into loss_sum.
    loss_sum, loss_count, acc, acc_steps = 0.0, 0, torch.zeros((), device=device), 0
    ckpt_root = out / "checkpoints"
    tensors: list[dict] = [{}, {}]  # model and optimizer state, read by rank 0 only

    def read_checkpoint() -> dict | None:
        last = checkpoint.latest(ckpt_root) if resume else None
        if last is None:
            return None
        tensors[0], state = checkpoint.load(last)
        if state["tokenizer_sha256"] != data.tokenizer_sha256:
            raise UserError(
                f"{cfg.data.path} was made with a different tokenizer than the run in {out}; "
                "resume with the dataset the run started on."
            )
        tensors[1] = state.pop("optimizer")
        return state

    state = ranks.from_main(read_checkpoint)
    if state is not None:
        load_full_state(model, optimizer, tensors[0], tensors[1], ranks)
        start_step, clock_s, metrics_offset = state["step"], state["wall_s"], state["metrics_bytes"]
        loss_sum, loss_count, acc_steps = state["loss_sum"], state["loss_count"], state["acc_steps"]
        acc = state["acc"].to(device)
    elif resume:
        metrics_offset = 0  # killed before the first checkpoint: start over
    tensors.clear()  # free rank 0's copy

    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if t.dtype == "bfloat16"
        else contextlib.nullcontext()
    )
    # Measured by rank 0 alone (the others would compete for the same cores), then shared.
    peak = ranks.from_main(lambda: {**peak_flops(device, t.dtype), "devices": ranks.world_size})
    peak_total = peak["value"] * ranks.world_size
    run_info = {
        "oneepoch_version": __version__,
        "torch_version": torch.__version__,
        "python": sys.version.split()[0],
        "status": "running",
        "hardware": hardware_info(device, ranks.world_size),
        "dtype": t.dtype,
        "compile": t.compile,
        "parallel": t.parallel if ranks.active else "none",
        "params": param_counts(shape),
        "flops_per_token": flops_per_token,
        "peak_flops": peak,
        "sampler": {"kind": sampler.kind, "pool_windows": sampler.pool, "epochs": cfg.data.epochs},
        "data": {
            "path": str(Path(cfg.data.path).resolve()),
            "tokenizer_sha256": data.tokenizer_sha256,
            "vocab_size": data.vocab_size,
            "train_tokens": data.train.num_tokens,
            "val_tokens_evaluated": val_windows * m.seq_len,
        },
    }
    if ranks.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.toml").write_text(cfg.to_toml())
        metrics = MetricsLog(out / "metrics.jsonl", truncate_to=metrics_offset)
        write_json(out / "run.json", run_info)

    val_tokens = read_windows(data.val, np.arange(val_windows), m.seq_len)

    @torch.no_grad()
    def evaluate() -> float:
        """Mean loss over the fixed validation windows, shared out over the ranks."""
        model.eval()
        mine = val_tokens[ranks.rank :: ranks.world_size]
        chunks = math.ceil(math.ceil(val_windows / ranks.world_size) / per_rank)
        total = torch.zeros(2, dtype=torch.float64, device=device)
        for i in range(chunks):
            chunk = mine[i * per_rank : (i + 1) * per_rank]
            # A rank short of windows still runs a forward pass, weighted 0, because FSDP's
            # parameter gathers need every rank.
            x = (chunk if len(chunk) else val_tokens[:1]).to(device)
            with autocast:
                loss = model(x[:, :-1], x[:, 1:])
            total[0] += loss.double() * len(chunk)
            total[1] += len(chunk)
        ranks.sum_(total)
        model.train()
        return (total[0] / total[1]).item()

    def step_batch(step: int) -> torch.Tensor:
        """This rank's (grad_accum, per_rank, seq_len + 1) share of the global batch."""
        windows = sampler.windows(step)
        mine = windows.reshape(t.grad_accum, ranks.world_size, per_rank)[:, ranks.rank]
        return read_windows(data.train, mine.reshape(-1), m.seq_len).view(
            t.grad_accum, per_rank, -1
        )

    def train_step(batch: torch.Tensor, lr: float) -> torch.Tensor:
        """One optimizer step; returns the mean loss of this rank's share, on the device."""
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = batch.to(device, non_blocking=True)
        total = torch.zeros((), device=device)
        for k in range(t.grad_accum):
            with grad_sync(train_model, k == t.grad_accum - 1), autocast:
                loss = train_model(batch[k, :, :-1], batch[k, :, 1:]) / t.grad_accum
                loss.backward()
            total += loss.detach()
        if cfg.optim.grad_clip > 0:
            clip_grad_norm_(model, cfg.optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return total

    def seed_step(step: int) -> None:
        # Dropout masks become a function of (seed, step, rank): nothing to save for resume.
        torch.manual_seed((t.seed * 1_000_003 + step) * 1009 + ranks.rank)

    def save_checkpoint(step: int) -> None:
        # Every rank takes part (FSDP gathers the shards); rank 0 writes.
        model_state, optim_state = full_state(model, optimizer)
        acc_mean = ranks.mean(acc).cpu()
        if ranks.is_main:
            metrics.sync()
            checkpoint.save(
                ckpt_root,
                step,
                model_state,
                {
                    "step": step,
                    "wall_s": clock.elapsed,
                    "optimizer": optim_state,
                    "loss_sum": loss_sum,
                    "loss_count": loss_count,
                    "acc": acc_mean,
                    "acc_steps": acc_steps,
                    "metrics_bytes": metrics.offset(),
                    "tokenizer_sha256": data.tokenizer_sha256,
                    "config": cfg.to_dict(),
                    "world_size": ranks.world_size,
                },
                keep=t.keep_checkpoints,
            )
        ranks.barrier()  # nobody leaves (e.g. on a signal) before the checkpoint is complete

    # Untimed warm-up: one forward/backward on the first batch (allocations, compilation),
    # gradients discarded and the random state re-seeded afterwards, so results don't change.
    if start_step < (steps or sampler.max_steps):  # not when resuming a finished run
        seed_step(start_step)
        warm = step_batch(start_step)[0].to(device)
        with autocast:
            train_model(warm[:, :-1], warm[:, 1:]).backward()
        optimizer.zero_grad(set_to_none=True)

    stop_signal: list[int] = []

    def on_signal(signum, _frame):
        stop_signal.append(signum)

    old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    progress = Progress(enabled=show_progress and ranks.is_main)
    clock = TrainClock(device, clock_s)
    batches = Prefetcher(step_batch, steps or sampler.max_steps, device)
    rates: list[float] = []
    last_log_step, last_log_wall, last_val = start_step, clock_s, None
    step, elapsed, status = start_step, clock_s, "failed"
    is_final = steps is not None and step >= steps
    try:
        clock.start()
        while (steps is None or step < steps) and (until_step is None or step < until_step):
            lr = lr_at(cfg.optim, step, steps, None if steps else elapsed / t.time_s)
            seed_step(step)
            acc += train_step(batches.get(step), lr)
            acc_steps += 1
            step += 1
            # Host-side only (a gloo exchange under torchrun, nothing on one process): every
            # rank stops at the same step, and sees the same clock.
            signum, elapsed = ranks.agree(stop_signal[0] if stop_signal else 0, clock.now())
            is_final = step == steps or (
                steps is None and (elapsed >= t.time_s or step >= sampler.max_steps)
            )
            pause = not is_final and until_step is not None and step >= until_step
            do_eval = is_final or step in eval_steps or step % eval_every == 0
            do_log = do_eval or step % t.log_every == 0
            do_ckpt = step % ckpt_every == 0 or is_final or pause
            if not (do_log or do_ckpt or signum):
                continue
            wall = clock.stop()
            if do_log:
                mean_acc = ranks.mean(acc)
                loss_sum, loss_count = loss_sum + mean_acc.item(), loss_count + acc_steps  # sync
                acc.zero_()
                acc_steps = 0
                train_loss = loss_sum / loss_count
                if not math.isfinite(train_loss):
                    raise UserError(
                        f"the training loss became {train_loss} at step {step}; lower --lr "
                        f"(now {cfg.optim.lr:g}) and start again (checkpoints before it are in "
                        f"{ckpt_root})."
                    )
                record = {
                    "kind": "train",
                    "step": step,
                    **sampler.progress(step),
                    "lr": lr,
                    "train_loss": train_loss,
                    "wall_s": wall,
                }
                record["flops"] = record["tokens"] * flops_per_token
                if wall > last_log_wall:
                    rates.append((step - last_log_step) * tokens_per_step / (wall - last_log_wall))
                if do_eval:
                    last_val = evaluate()
                    record.update(kind="eval", val_loss=last_val)
                    progress.last_val = last_val
                if ranks.is_main:
                    metrics.write(record)
                loss_sum, loss_count = 0.0, 0
                last_log_step, last_log_wall = step, wall
                rate = rates[-1] if rates else 0.0
                remaining = (steps - step) * tokens_per_step / rate if steps and rate else None
                if steps is None:
                    remaining = t.time_s - wall
                mfu = rate * flops_per_token / peak_total
                progress.update(step, steps, train_loss, rate, remaining, mfu, force=is_final)
            if do_ckpt or (signum and not is_final):
                save_checkpoint(step)
            if is_final or pause:
                break
            if signum:
                raise Interrupted(signum, step, "")
            clock.start()
        clock.stop()
        status = "completed" if is_final else "paused"
    except Interrupted as exc:
        status = "interrupted"
        name = signal.Signals(exc.signum).name
        exc.args = (
            f"{name} at step {exc.step}: checkpoint written; continue with "
            f"`oneepoch train --data {cfg.data.path} --out {out} --resume`",
        )
        raise
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
        progress.close()
        batches.close()
        if ranks.is_main:
            metrics.close()
            tokens_per_s = statistics.median(rates) if rates else 0.0
            prog = sampler.progress(step)
            run_info.update(
                status=status,
                tokens_per_s=tokens_per_s,
                mfu=tokens_per_s * flops_per_token / peak_total,
                final={
                    "step": step,
                    "tokens": prog["tokens"],
                    "unique_tokens": prog["unique_tokens"],
                    "wall_s": clock.elapsed,
                    "val_loss": last_val,
                },
            )
            write_json(out / "run.json", run_info)
        if status != "failed":  # after a failure a peer may be gone: just exit
            ranks.close()
    return read_json(out / "run.json") if ranks.is_main else run_info
