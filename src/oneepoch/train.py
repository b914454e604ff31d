"""The trainer: composes data, sampler, model, optimizer, schedule and run directory.

The batch at step s is a pure function of (seed, s, dataset), and the random state used
by dropout is re-seeded from (seed, s, rank) every step, so resuming from a checkpoint
reproduces the uninterrupted run exactly. ``batch_size`` is global: each step's windows are
split into ``grad_accum`` micro-batches and each of those over the ranks, so the global
batch, and the one-pass guarantee, do not depend on the number of ranks (see
``oneepoch.distributed``).

The pieces, in the order ``train`` composes them: ``setup`` (the config resolved once, the
data, the sampler, the cadence), ``build_model`` and ``restore`` (model, optimizer, loss
meter and clock from the latest checkpoint), ``RunRecord`` (config.toml, metrics.jsonl,
run.json), ``Evaluator``, the step (``oneepoch.step.train_step``) and the loop.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import math
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from oneepoch import __version__, checkpoint
from oneepoch.config import RunConfig, load_toml, total_steps, validate
from oneepoch.data.dataset import Dataset, open_dataset
from oneepoch.data.ngram import ngram_losses
from oneepoch.distributed import Ranks, full_state, init_distributed, load_full_state, parallelize
from oneepoch.errors import UserError
from oneepoch.flops import Shape, activation_bytes, param_counts, train_flops_per_token
from oneepoch.live_forecast import ForecastPlan, LiveForecast
from oneepoch.locking import hold
from oneepoch.measure.dtype import pick_dtype, quiet_tokens_per_s
from oneepoch.measure.machine import hardware_info, peak_flops, pick_device, sync
from oneepoch.model import GPT, check_state
from oneepoch.prefetch import Prefetcher
from oneepoch.progress import Progress
from oneepoch.rundir import RunDir
from oneepoch.sampler import OnePassSampler, RepeatedSampler, num_windows
from oneepoch.schedule import Cadence, lr_at
from oneepoch.slowdown import slowed_now, slowed_summary
from oneepoch.step import autocast, build_optimizer, micro_step, read_windows, train_step


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; a checkpoint was written, so the run can be resumed."""

    def __init__(self, signum: int, step: int, out: Path | None = None, data: str = ""):
        super().__init__(f"{signal.Signals(signum).name} at step {step}: checkpoint written")
        self.signum, self.step, self.out, self.data = signum, step, out, data


class TrainClock:
    """Training wall-clock that pauses for evaluation and checkpointing."""

    def __init__(self, device: torch.device, elapsed: float = 0.0):
        self.device, self.elapsed, self._since = device, elapsed, None

    def start(self) -> None:
        sync(self.device)
        self._since = time.perf_counter()

    def now(self) -> float:
        """Elapsed training time, including the running segment (no device sync)."""
        running = time.perf_counter() - self._since if self._since is not None else 0.0
        return self.elapsed + running

    def stop(self) -> float:
        sync(self.device)
        if self._since is not None:
            self.elapsed += time.perf_counter() - self._since
            self._since = None
        return self.elapsed


# ---------------------------------------------------------------------------------------
# Setup: the config resolved once


# Where the data lives, how ranks share the model and where TensorBoard logs go may change
# between sessions of a run: checkpoints do not depend on them.
RESUME_MAY_CHANGE = {"data.path", "train.parallel", "log.tensorboard"} | {
    f"forecast.{key}" for key in ("live", "target_loss", "stop_if_unreachable", "companion")
}


def resolve_config(base: RunConfig, out: Path, resume: bool, overrides: dict) -> RunConfig:
    """The run's config, a copy: the saved one when resuming (overrides may not change it)."""
    files = RunDir(out)
    saved = files.config
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
                f"resuming continues {out} exactly as configured in its config.toml, but the "
                f"settings given change {', '.join(changed)}; drop them or start a new run "
                "elsewhere (with `oneepoch train`: drop those flags or pass another --out)."
            )
        for key in RESUME_MAY_CHANGE:
            sec, k = key.split(".")
            if k in overrides.get(sec, {}):
                setattr(getattr(cfg, sec), k, overrides[sec][k])
        return cfg
    if resume and not saved.exists() and not files.checkpoints.exists():
        # Say so rather than refuse: a job that is started again and again with --resume
        # (on a preemptible machine, say) must also be able to start its run the first time.
        print(f"note: {out} holds no run yet, so --resume starts a new one there.", file=sys.stderr)
    if not resume and (saved.exists() or files.metrics.exists()):
        raise UserError(
            f"{out} already holds a run; resume it (`oneepoch train --resume`) or choose "
            "another run directory (--out)."
        )
    return copy.deepcopy(base)


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


@dataclass
class TrainingRun:
    """What setup decided, read-only for the rest: the resolved config and its consequences."""

    cfg: RunConfig
    out: Path
    ranks: Ranks
    device: torch.device
    data: Dataset
    sampler: OnePassSampler | RepeatedSampler
    steps: int | None  # None: a wall-clock budget
    per_rank: int  # sequences of a micro-batch on each rank
    val_windows: int
    cadence: Cadence
    shape: Shape
    resolved: dict = field(default_factory=dict)  # what "auto"s and zeros became (run.json)

    @property
    def dir(self) -> RunDir:
        return RunDir(self.out)

    @property
    def max_steps(self) -> int:
        return self.steps or self.sampler.max_steps

    def is_final(self, step: int, elapsed_s: float) -> bool:
        """The budget is spent after ``step`` steps and ``elapsed_s`` training seconds."""
        if self.steps is not None:
            return step == self.steps
        return elapsed_s >= self.cfg.train.time_s or step >= self.sampler.max_steps

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.train.batch_size * self.cfg.model.seq_len

    def seed_step(self, step: int) -> None:
        # Dropout masks become a function of (seed, step, rank): nothing to save for resume.
        torch.manual_seed((self.cfg.train.seed * 1_000_003 + step) * 1009 + self.ranks.rank)

    def batch(self, step: int) -> torch.Tensor:
        """This rank's (grad_accum, per_rank, seq_len + 1) share of the global batch."""
        t, r = self.cfg.train, self.ranks
        mine = self.sampler.windows(step).reshape(t.grad_accum, r.world_size, self.per_rank)
        windows = mine[:, r.rank].reshape(-1)
        return read_windows(self.data.train, windows, self.cfg.model.seq_len).view(
            t.grad_accum, self.per_rank, -1
        )


def claim_run_dir(out: Path, stack: contextlib.ExitStack) -> None:
    """Create ``out`` if needed and hold it for this trainer until ``stack`` closes.

    A second trainer (or a resume) on the same directory is refused at once, naming this
    process (``oneepoch.locking``). Folders created here are removed again if the run fails
    before writing anything into them.
    """
    if out.exists() and not out.is_dir():
        raise UserError(
            f"--out {out} is a file, not a run directory; give --out a new folder (or the "
            "folder of a run, with --resume)."
        )
    created = [p for p in (out, *out.parents) if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"cannot create the run directory {out} ({exc.strerror}); choose an --out where "
            "you may write."
        ) from None
    for folder in reversed(created):  # run last, deepest first
        stack.callback(_remove_if_empty, folder)
    stack.enter_context(hold(out, "train"))
    RunDir(out).check()  # a link there would have us write wherever it points, say


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


def setup(
    cfg: RunConfig,
    out: Path,
    resume: bool,
    overrides: dict,
    stack: contextlib.ExitStack | None = None,
) -> TrainingRun:
    """Parse, validate and resolve (device, dtype, vocabulary, steps) once; ``cfg`` itself
    is left as it was. With ``stack``, rank 0 holds ``out`` until the stack closes."""
    auto_kind = "cuda" if torch.cuda.is_available() else "cpu"
    ranks = init_distributed(auto_kind if cfg.train.device == "auto" else cfg.train.device)

    def claim_and_resolve() -> RunConfig:
        if stack is not None:
            claim_run_dir(out, stack)  # before config.toml or metrics.jsonl are read
        return resolve_config(cfg, out, resume, overrides)

    cfg = ranks.from_main(claim_and_resolve)
    validate(cfg)
    m, t = cfg.model, cfg.train
    device = pick_device(t.device, ranks.local_rank)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # float32 matmuls on TF32 tensor cores
    if not cfg.data.path:
        raise UserError("no dataset given; name a dataset directory made by `oneepoch prepare`.")
    # Rank 0 re-hashes the shards (and reports a mismatch to all); the others check sizes.
    ranks.from_main(lambda: open_dataset(cfg.data.path, verify_checksums=True).path)
    data = open_dataset(cfg.data.path, verify_checksums=False)
    if m.vocab_size and m.vocab_size != data.vocab_size:
        raise vocab_mismatch(cfg, data, out, resume)
    m.vocab_size = data.vocab_size
    steps = total_steps(cfg)
    micro = t.batch_size // t.grad_accum
    if micro % ranks.world_size:
        raise UserError(
            f"the micro-batch ({t.batch_size} / grad_accum {t.grad_accum} = {micro}) must divide "
            f"evenly over {ranks.world_size} ranks; change batch_size or grad_accum."
        )
    val_windows = min(
        max(1, t.eval_tokens // m.seq_len), num_windows(data.val.num_tokens, m.seq_len)
    )
    if val_windows < 1:
        raise UserError(
            f"the validation split has fewer than {m.seq_len + 1} tokens; prepare with a larger validation split."
        )
    shape = m.shape()
    check_memory(cfg, shape, device, micro // ranks.world_size, ranks)
    # Rank 0 decides (on CPU by timing the step, which ranks sharing cores must not do at
    # once; after the memory check, as it builds the model); config.toml records what ran.
    t.dtype = ranks.from_main(lambda: pick_dtype(t.dtype, device, m, micro // ranks.world_size))
    cadence = Cadence(steps, t.eval_every, t.checkpoint_every)
    resolved = {
        "device": str(device),
        "dtype": t.dtype,
        "vocab_size": m.vocab_size,
        "steps": steps,
        "eval_every": cadence.eval_every,
        "checkpoint_every": cadence.checkpoint_every,
    }
    return TrainingRun(
        cfg=cfg,
        out=out,
        ranks=ranks,
        device=device,
        data=data,
        sampler=make_sampler(cfg, data, steps),
        steps=steps,
        per_rank=micro // ranks.world_size,
        val_windows=val_windows,
        cadence=cadence,
        shape=shape,
        resolved=resolved,
    )


def vocab_mismatch(cfg: RunConfig, data: Dataset, out: Path, resume: bool) -> UserError:
    if resume and RunDir(out).config.is_file():  # the run's own, not a setting to drop
        return UserError(
            f"{cfg.data.path} has a vocabulary of {data.vocab_size} but the run in {out} "
            f"was trained with {cfg.model.vocab_size}; resume with the dataset the run started on."
        )
    return UserError(
        f"the config's vocab_size ({cfg.model.vocab_size}) does not match the dataset's tokenizer "
        f"({data.vocab_size}); remove vocab_size from the config or use the matching dataset."
    )


def _size(n_bytes: float) -> str:
    return f"{n_bytes / 1e12:,.1f} TB" if n_bytes >= 1e12 else f"{n_bytes / 1e9:,.1f} GB"


def check_memory(cfg: RunConfig, shape: Shape, device: torch.device, per_rank: int, ranks):
    """Refuse, before allocating anything, a model that cannot fit in this device's memory.

    A lower bound: 16 bytes per parameter (float32 weights and gradients, AdamW's two
    moments; sharded over the ranks under FSDP) and a micro-batch's activations
    (``oneepoch.flops.activation_bytes``). On a GPU the model is first built in host memory (4 bytes per
    parameter), so that is checked too.
    """
    import psutil

    m = cfg.model
    params = param_counts(shape)["total"]
    shards = ranks.world_size if cfg.train.parallel == "fsdp" and ranks.active else 1
    state = 16 * params / shards
    acts = activation_bytes(shape, per_rank)
    host = psutil.virtual_memory().available
    needs = [(state + acts, host, "in memory")]
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        needs = [(4 * params, host, "in host memory"), (state + acts, free, f"on {device}")]
    for need, have, where in needs:
        if need <= have:
            continue
        fits = have / 16 * shards
        raise UserError(
            f"a model of {params:.3g} parameters (n_layer {m.n_layer}, d_model {m.d_model}) "
            f"needs at least {_size(need)} ({_size(state)} for weights, gradients and AdamW "
            f"state, {_size(acts)} for the activations of {per_rank} sequences), more than the "
            f"{_size(have)} free {where}; at most about {fits:.3g} parameters fit here (before "
            "activations), so lower --n-layer or --d-model (or --batch-size or --seq-len)."
        )


# ---------------------------------------------------------------------------------------
# Model, optimizer and what a checkpoint restores


class LossMeter:
    """The training loss between log lines, part of checkpointed state.

    Each rank sums its per-step losses on the device (no sync per step); at a log line the
    mean over ranks is folded in and the mean per step since the last line comes out.
    """

    def __init__(self, device: torch.device):
        self.sum, self.count, self.steps = 0.0, 0, 0
        self.acc = torch.zeros((), device=device)

    def add(self, loss: torch.Tensor) -> None:
        self.acc += loss
        self.steps += 1

    def take(self, ranks: Ranks) -> float:
        """Mean training loss since the last call (a host sync; every rank calls it)."""
        self.sum, self.count = self.sum + ranks.mean(self.acc).item(), self.count + self.steps
        self.acc.zero_()
        self.steps = 0
        mean = self.sum / self.count
        self.sum, self.count = 0.0, 0
        return mean

    def state_dict(self, ranks: Ranks) -> dict:
        acc = ranks.mean(self.acc).cpu()  # every rank calls it
        return {"loss_sum": self.sum, "loss_count": self.count, "acc": acc, "acc_steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.sum, self.count, self.steps = (
            state["loss_sum"],
            state["loss_count"],
            state["acc_steps"],
        )
        self.acc = state["acc"].to(self.acc.device)


def build_model(run: TrainingRun):
    """(model, the model as wrapped for ranks, AdamW), initialised from the seed."""
    t = run.cfg.train
    torch.manual_seed(t.seed)
    model = GPT(run.cfg.model).to(run.device)
    train_model = parallelize(model, t.parallel, t.compile, run.device, run.ranks)
    return model, train_model, build_optimizer(model, run.cfg.optim)  # after FSDP's sharding


@dataclass
class Resumed:
    step: int = 0
    wall_s: float = 0.0
    metrics_bytes: int | None = None  # where metrics.jsonl is cut back to; None: keep it


def restore(run: TrainingRun, model, optimizer, meter: LossMeter, resume: bool) -> Resumed:
    """Load the latest checkpoint (rank 0 reads, every rank loads) when resuming."""
    ckpt_root, tensors = run.dir.checkpoints, [{}, {}]

    def read() -> dict | None:
        if not resume:
            return None
        damaged: list[checkpoint.Damaged] = []
        for ckpt in checkpoint.candidates(ckpt_root):
            try:
                tensors[0], state = checkpoint.load(ckpt)
                break
            except checkpoint.Damaged as exc:
                damaged.append(exc)
        else:
            if damaged:
                names = ", ".join(f"{d.ckpt_dir.name} ({d.reason})" for d in damaged)
                raise UserError(
                    f"every checkpoint of {run.out} is damaged ({names}), so the run cannot be "
                    f"resumed; delete {ckpt_root} to restart it from step 0, or start a new "
                    "run with another --out."
                )
            if run.dir.holds_run():
                print(
                    f"note: {run.out} has no checkpoint yet, so --resume starts it again from "
                    "step 0.",
                    file=sys.stderr,
                )
            return None
        if damaged:
            names = ", ".join(f"{d.ckpt_dir.name} ({d.reason})" for d in damaged)
            print(
                f"warning: checkpoint {names} of {run.out} is damaged; resuming from the "
                f"previous good one, {ckpt.name} (step {state['step']}).",
                file=sys.stderr,
            )
        check_state(tensors[0], run.cfg.model, ckpt, state)  # config.toml edited since?
        if state["tokenizer_sha256"] != run.data.tokenizer_sha256:
            raise UserError(
                f"{run.cfg.data.path} was made with a different tokenizer than the run in "
                f"{run.out}; resume with the dataset the run started on."
            )
        if state.get("data_fingerprint", run.data.fingerprint) != run.data.fingerprint:
            raise UserError(
                f"{run.cfg.data.path} holds other tokens than the dataset run {run.out} started "
                "on (its fingerprint differs: it was prepared again from other text or "
                "settings); resume with the original dataset, or start a new run with another "
                "--out."
            )
        tensors[1] = state.pop("optimizer")
        return state

    state = run.ranks.from_main(read)
    if state is None:
        return Resumed(metrics_bytes=0 if resume else None)  # no checkpoint yet: start over
    load_full_state(model, optimizer, tensors[0], tensors[1], run.ranks)
    meter.load_state_dict(state)
    return Resumed(state["step"], state["wall_s"], state["metrics_bytes"])


def save_checkpoint(
    run: TrainingRun, model, optimizer, meter: LossMeter, record, step, wall_s
) -> None:
    """Every rank takes part (FSDP gathers the shards); rank 0 writes."""
    model_state, optim_state = full_state(model, optimizer)
    loss_state = meter.state_dict(run.ranks)
    if run.ranks.is_main:
        record.metrics.sync()
        state = {"step": step, "wall_s": wall_s, "optimizer": optim_state, **loss_state}
        state.update(
            metrics_bytes=record.metrics.offset(),
            tokenizer_sha256=run.data.tokenizer_sha256,
            data_fingerprint=run.data.fingerprint,
            config=run.cfg.to_dict(),
            world_size=run.ranks.world_size,
        )
        checkpoint.save(
            run.dir.checkpoints, step, model_state, state, keep=run.cfg.train.keep_checkpoints
        )
    run.ranks.barrier()  # nobody leaves (e.g. on a signal) before the checkpoint is complete


# ---------------------------------------------------------------------------------------
# The run record and evaluation


class RunRecord:
    """config.toml, metrics.jsonl and run.json; rank 0 writes, the others only keep count."""

    def __init__(self, run: TrainingRun, metrics_bytes: int | None, resumed_step: int = 0):
        self.run = run
        ranks, cfg, data, t = run.ranks, run.cfg, run.data, run.cfg.train
        # Measured by rank 0 alone (the others would compete for the same cores), then shared.
        peak = ranks.from_main(
            lambda: {**peak_flops(run.device, t.dtype), "devices": ranks.world_size}
        )
        self.flops_per_token = train_flops_per_token(run.shape)
        self.peak_total = peak["value"] * ranks.world_size
        self.rates: list[float] = []  # tokens/s between log lines
        self.rate_seconds: list[float] = []  # the training seconds each rate was taken over
        # What this step did on a quiet machine (the dtype probe's timing), if known: a run
        # slowed throughout by load is then told apart from a slow configuration.
        # The probe times one CPU process, so only such a run has that reference.
        on_one_cpu = run.device.type == "cpu" and not ranks.active
        self.quiet_rate = (
            quiet_tokens_per_s(cfg.model, run.per_rank, t.dtype) if on_one_cpu else None
        )
        self.info = {
            "oneepoch_version": __version__,
            "torch_version": torch.__version__,
            "python": sys.version.split()[0],
            "status": "running",
            "hardware": hardware_info(run.device, ranks.world_size),
            "dtype": t.dtype,
            "compile": t.compile,
            "parallel": t.parallel if ranks.active else "none",
            "params": param_counts(run.shape),
            "flops_per_token": self.flops_per_token,
            "peak_flops": peak,
            "sampler": {
                "kind": run.sampler.kind,
                "pool_windows": run.sampler.pool,
                "epochs": cfg.data.epochs,
            },
            "data": {
                "path": str(Path(cfg.data.path).resolve()),
                "tokenizer_sha256": data.tokenizer_sha256,
                "fingerprint": data.fingerprint,
                "vocab_size": data.vocab_size,
                "train_tokens": data.train.num_tokens,
                "val_tokens_evaluated": run.val_windows * cfg.model.seq_len,
                # the levels the forecast compares an early curve with (data/ngram.py)
                **(recorded_or_counted_ngram_losses(run, resumed_step) if ranks.is_main else {}),
            },
            "resolved": run.resolved,
        }
        self.metrics = self.events = None
        if ranks.is_main:
            run.out.mkdir(parents=True, exist_ok=True)
            run.dir.write_config(cfg.to_toml())
            self.metrics = run.dir.open_metrics(truncate_to=metrics_bytes)
            run.dir.write_info(self.info)
            if cfg.log.tensorboard:  # a view of metrics.jsonl, which stays the record
                from oneepoch.tensorboard import live_log

                args = (self.flops_per_token, peak, resumed_step)
                self.events = live_log(run.out, cfg.log.tensorboard, *args)

    def rate(self, steps: int, seconds: float) -> float:
        """Record the tokens/s of ``steps`` steps in ``seconds``; the latest rate."""
        if seconds > 0:
            self.rates.append(steps * self.run.tokens_per_step / seconds)
            self.rate_seconds.append(seconds)
        return self.rates[-1] if self.rates else 0.0

    def mfu(self, tokens_per_s: float) -> float:
        return tokens_per_s * self.flops_per_token / self.peak_total

    def write(self, record: dict) -> None:
        self.train_loss = record.get("train_loss", getattr(self, "train_loss", None))
        if self.metrics is not None:
            self.metrics.write(record)
        if self.events is not None:
            self.events.write(record)
            self.events.flush()  # viewable while training, as metrics.jsonl is

    def finish(self, status: str, step: int, wall_s: float, val_loss: float | None) -> dict:
        if self.metrics is None:
            return self.info
        self.metrics.close()
        if self.events is not None:
            self.events.close()
        tokens_per_s = statistics.median(self.rates) if self.rates else 0.0
        prog = self.run.sampler.progress(step)
        self.info.update(
            status=status,
            tokens_per_s=tokens_per_s,
            mfu=self.mfu(tokens_per_s),
            slowed_by_load=slowed_summary(self.rates, self.rate_seconds, self.quiet_rate),
            final={
                "step": step,
                "tokens": prog["tokens"],
                "unique_tokens": prog["unique_tokens"],
                "wall_s": wall_s,
                "val_loss": val_loss,
                "train_loss": getattr(self, "train_loss", None),  # the last logged step's
            },
        )
        try:
            self.run.dir.write_info(self.info)
        except OSError:
            if status != "failed":
                raise
            return self.info  # a full disk, say: the error that stopped the run is reported
        return self.run.dir.read_info()


class Evaluator:
    """Mean loss over the fixed validation windows, shared out over the ranks in chunks of
    the micro-batch."""

    def __init__(self, run: TrainingRun):
        self.run = run
        self.tokens = read_windows(run.data.val, np.arange(run.val_windows), run.cfg.model.seq_len)

    @torch.no_grad()
    def __call__(self, model: GPT) -> float:
        run, ranks, per_rank = self.run, self.run.ranks, self.run.per_rank
        model.eval()
        mine = self.tokens[ranks.rank :: ranks.world_size]
        chunks = math.ceil(math.ceil(run.val_windows / ranks.world_size) / per_rank)
        total = torch.zeros(2, dtype=torch.float64, device=run.device)
        for i in range(chunks):
            chunk = mine[i * per_rank : (i + 1) * per_rank]
            # A rank short of windows still runs a forward pass, weighted 0, because FSDP's
            # parameter gathers need every rank.
            x = (chunk if len(chunk) else self.tokens[:1]).to(run.device)
            with autocast(run.cfg.train.dtype, run.device):
                loss = model(x[:, :-1], x[:, 1:])
            total[0] += loss.double() * len(chunk)
            total[1] += len(chunk)
        ranks.sum_(total)
        model.train()
        return (total[0] / total[1]).item()


def warm_up(run: TrainingRun, train_model, optimizer, start_step: int) -> None:
    """Untimed: one forward/backward on the first batch (allocations, compilation), gradients
    discarded and the random state re-seeded afterwards, so results don't change."""
    if start_step < run.max_steps:  # not when resuming a finished run
        run.seed_step(start_step)
        micro = run.batch(start_step)[0].to(run.device)
        micro_step(train_model, micro, 1, run.cfg.train.dtype, last=True)
        optimizer.zero_grad(set_to_none=True)


class StopSignals:
    """SIGINT/SIGTERM are noted (``signum``), not raised, while the block runs."""

    def __enter__(self):
        self.signum = 0
        self._old = {s: signal.signal(s, self._note) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _note(self, signum, _frame) -> None:
        self.signum = self.signum or signum

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


# ---------------------------------------------------------------------------------------
# The loop


def log_line(
    run: TrainingRun, record: RunRecord, meter: LossMeter, step: int, lr: float, wall: float
):
    """The metrics line of ``step`` (without evaluation); raises on a non-finite loss."""
    train_loss = meter.take(run.ranks)
    if not math.isfinite(train_loss):
        raise UserError(
            f"the training loss became {train_loss} at step {step}; lower the learning rate "
            f"(now {run.cfg.optim.lr:g}) and start again (checkpoints before it are in "
            f"{run.dir.checkpoints})."
        )
    line = {"kind": "train", "step": step, **run.sampler.progress(step), "lr": lr}
    line.update(train_loss=train_loss, wall_s=wall)
    line["flops"] = line["tokens"] * record.flops_per_token
    return line


def show(
    progress: Progress, run: TrainingRun, record: RunRecord, line: dict, rate: float, final: bool
):
    steps, step, wall = run.steps, line["step"], line["wall_s"]
    left = (steps - step) * run.tokens_per_step / rate if steps and rate else None
    left = run.cfg.train.time_s - wall if steps is None else left
    epoch = line["epoch"] if run.cfg.data.epochs > 1 else None  # multi-epoch runs show it
    note = slowed_now(record.rates, record.quiet_rate)
    progress.update(
        step, steps, line["train_loss"], rate, left, record.mfu(rate), final, epoch, note
    )


def start_live_forecast(run: TrainingRun, record: RunRecord, progress: Progress) -> LiveForecast:
    """The live forecast of the final loss (oneepoch.live_forecast): rank 0's, unless off."""
    f = run.cfg.forecast
    plan = ForecastPlan(
        run.out,
        run.steps,
        run.cfg.train.time_s,
        f.target_loss or None,
        f.stop_if_unreachable,
        f.companion or None,
    )
    return LiveForecast(plan, record.write, progress.warn, enabled=f.live and run.ranks.is_main)


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
    are compared by wall-clock train this way in interleaved segments. ``cfg`` is not
    changed; what was resolved is in run.json's "resolved". Under torchrun every rank calls
    this; rank 0 alone reads and writes ``out``.
    """
    if until_step is not None and until_step < 1:
        raise UserError(
            f"--until-step {until_step} would pause the run before its first step; give a "
            "step of 1 or more."
        )
    with contextlib.ExitStack() as stack:
        run = setup(cfg, Path(out), resume, overrides or {}, stack)
        if resume and (done := run.ranks.from_main(lambda: completed_info(run))) is not None:
            run.ranks.close()
            return done
        try:
            return _train(run, resume, show_progress, until_step)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise disk_full(run) from None


def recorded_or_counted_ngram_losses(run: TrainingRun, resumed_step: int) -> dict:
    """The data's n-gram losses: a resumed run keeps those its run.json holds for the same
    data (counting again would cost every segment of an interleaved job up to a second)."""
    if resumed_step:
        before = run.dir.read_info().get("data") or {}
        kept = {k: before.get(k) for k in ("unigram_loss", "bigram_loss")}
        if before.get("fingerprint") == run.data.fingerprint and None not in kept.values():
            return kept
    return ngram_losses(run.data.train, run.data.val, run.val_windows, run.cfg.model.seq_len)


def completed_info(run: TrainingRun) -> dict | None:
    """run.json of a completed run (saying so on stderr), which resuming leaves as it is."""
    if run.dir.status()[0] != "completed":
        return None
    info = run.dir.read_info()
    final = info.get("final") or {}
    val = final.get("val_loss")
    print(
        f"{run.out} is complete ({final.get('step')} steps"
        + (f", val_loss {val:.4f}" if isinstance(val, (int, float)) else "")
        + "); there is nothing to resume, and nothing was changed.",
        file=sys.stderr,
    )
    return info


def disk_full(run: TrainingRun) -> UserError:
    last = checkpoint.latest(run.dir.checkpoints)
    kept = (
        f"the previous checkpoint, {last}, is intact" if last else "no checkpoint was written yet"
    )
    return UserError(
        f"the disk is full (no space left on the device holding {run.out}), so training "
        f"stopped; {kept}: free some space, then continue with `oneepoch train --data "
        f"{run.cfg.data.path} --out {run.out} --resume`."
    )


def _train(run: TrainingRun, resume: bool, show_progress: bool, until_step: int | None) -> dict:
    t, ranks, steps = run.cfg.train, run.ranks, run.steps
    model, train_model, optimizer = build_model(run)
    meter = LossMeter(run.device)
    start = restore(run, model, optimizer, meter, resume)
    record, evaluate = RunRecord(run, start.metrics_bytes, start.step), Evaluator(run)
    warm_up(run, train_model, optimizer, start.step)
    progress = Progress(enabled=show_progress and ranks.is_main)
    clock = TrainClock(run.device, start.wall_s)
    batches = Prefetcher(run.batch, run.max_steps, run.device)
    last_step, last_wall, last_val = start.step, start.wall_s, None
    step, elapsed, status, stopped = start.step, start.wall_s, "failed", False
    is_final = steps is not None and step >= steps
    step_kw = {"device": run.device, "dtype": t.dtype, "grad_clip": run.cfg.optim.grad_clip}
    live = start_live_forecast(run, record, progress)
    stop_if_unreachable = run.cfg.forecast.stop_if_unreachable
    try:
        with StopSignals() as stop:
            clock.start()
            while (steps is None or step < steps) and (until_step is None or step < until_step):
                lr = lr_at(run.cfg.optim, step, steps, None if steps else elapsed / t.time_s)
                run.seed_step(step)
                batch = batches.get(step)
                meter.add(train_step(model, train_model, optimizer, batch, lr, **step_kw))
                step += 1
                # Host-side only (a gloo exchange under torchrun, nothing on one process):
                # every rank stops at the same step, and sees the same clock.
                signum, elapsed = ranks.agree(stop.signum, clock.now())
                is_final = run.is_final(step, elapsed)
                pause = not is_final and until_step is not None and step >= until_step
                do_eval = run.cadence.evaluates(step, is_final)
                do_log = do_eval or step % t.log_every == 0
                if not (do_log or run.cadence.checkpoints(step, is_final or pause) or signum):
                    continue
                wall = clock.stop()
                if do_log:
                    line = log_line(run, record, meter, step, lr, wall)
                    rate = record.rate(step - last_step, wall - last_wall)
                    if do_eval:
                        line.update(kind="eval", val_loss=(last_val := evaluate(model)))
                        progress.last_val = last_val
                    record.write(line)
                    live.after_line(step, do_eval, run.cadence.evaluates, wall)
                    progress.forecast = live.progress_note(wall)
                    last_step, last_wall = step, wall
                    show(progress, run, record, line, rate, is_final)
                if do_eval and stop_if_unreachable and not is_final:
                    # rank 0's forecast decides for every rank
                    stopped = ranks.from_main(lambda: live.stop)
                    pause = pause or stopped
                if run.cadence.checkpoints(step, is_final or pause) or (signum and not is_final):
                    live.drain()  # the forecasts made up to here are in the file it keeps
                    save_checkpoint(run, model, optimizer, meter, record, step, clock.elapsed)
                if is_final or pause:
                    break
                if signum:
                    raise Interrupted(signum, step, run.out, run.cfg.data.path)
                clock.start()
            clock.stop()
        status = "completed" if is_final else "stopped" if stopped else "paused"
    except Interrupted:
        status = "interrupted"
        raise
    finally:
        live.close(wait=status != "failed")
        progress.close()
        batches.close()
        info = record.finish(status, step, clock.elapsed, last_val)
        if status != "failed":  # after a failure a peer may be gone: just exit
            ranks.close()
    return info
