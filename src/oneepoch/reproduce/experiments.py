"""The job of `oneepoch reproduce`: which runs the paper's five experiments need.

A plan is plain data (written to OUT/job.json): the runs, each a set of settings over the
preset's baseline, and for each experiment which runs it compares. Runs shared by several
experiments are trained once: experiment 1's one-epoch run is also experiment 2's dropout-0
run and experiment 4's baseline at the full budget. Torch-free.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from oneepoch.errors import UserError
from oneepoch.flops import Shape, param_counts, train_flops_per_token
from oneepoch.plan.rules import RuleContext, make_rule
from oneepoch.plan.shapes import FlopsCurve, head_count, near_equal
from oneepoch.reproduce.presets import Preset

ONE_EPOCH = "one-epoch"
# The paper's multi-epoch baseline is ten epochs; experiment 5 uses it when it is run.
PAPER_EPOCHS = 10.0


@dataclass(frozen=True)
class RunSpec:
    key: str  # the run's folder name under runs/seedN/
    n_layer: int
    n_head: int
    d_model: int
    steps: int
    epochs: float = 1.0
    dropout: float = 0.0
    role: str = ""

    def shape(self, seq_len: int, vocab_size: int) -> Shape:
        return Shape(self.n_layer, self.n_head, self.d_model, seq_len, vocab_size)

    @property
    def label(self) -> str:
        return f"{self.n_layer}x{self.n_head}x{self.d_model}"


def plan_job(preset: Preset, train_tokens: int, vocab_size: int, epochs=None, rules=None) -> dict:
    """Runs and experiments for ``preset`` on a corpus of ``train_tokens`` training tokens."""
    epochs = tuple(float(e) for e in (epochs or preset.epochs))
    seq = preset.seq_len
    windows = max(0, (train_tokens - 1) // seq)  # whole windows, as the sampler cuts them
    max_steps = windows // preset.batch_size
    if max_steps < preset.steps:
        raise UserError(
            f"the corpus has {train_tokens:,} training tokens, but --preset {preset.name} "
            f"needs at least {preset.tokens + 1:,} (one epoch of {preset.steps} steps x "
            f"{preset.tokens_per_step} tokens); prepare a larger corpus or choose a smaller preset."
        )
    runs: dict[str, RunSpec] = {}

    def add(spec: RunSpec) -> str:
        for key, other in runs.items():  # the same run under another name: train it once
            if asdict(other) | {"key": key, "role": ""} == asdict(spec) | {"key": key, "role": ""}:
                return key
        runs[spec.key] = spec
        return spec.key

    base = dict(n_layer=preset.n_layer, n_head=preset.n_head, d_model=preset.d_model)
    one = add(RunSpec(ONE_EPOCH, **base, steps=preset.steps, role="one epoch, dropout 0"))
    exp1 = []
    for e in epochs:
        if e <= 1:
            raise UserError(f"--epochs values must be above 1, got {e:g}.")
        repeated = add(
            RunSpec(f"E{e:g}", **base, steps=preset.steps, epochs=e, role=f"{e:g} epochs")
        )
        p = preset.multi_epoch_dropout
        regularized = add(
            RunSpec(
                f"E{e:g}-dropout{p:g}",
                **base,
                steps=preset.steps,
                epochs=e,
                dropout=p,
                role=f"{e:g} epochs, dropout {p:g}",
            )
        )
        exp1.append(
            {
                "epochs": e,
                "unique_tokens": preset.tokens / e,
                "one_epoch": one,
                "repeated": repeated,
                "regularized": regularized,
                "dropout": p,
            }
        )
    exp2 = {"0": one}
    for p in preset.dropouts:
        exp2[f"{p:g}"] = add(
            RunSpec(
                f"dropout{p:g}",
                **base,
                steps=preset.steps,
                dropout=p,
                role=f"one epoch, dropout {p:g}",
            )
        )

    base_shape = Shape(preset.n_layer, preset.n_head, preset.d_model, seq, vocab_size)
    full_flops = train_flops_per_token(base_shape) * preset.tokens
    ctx = RuleContext(FlopsCurve(seq, vocab_size), unique_tokens=windows * seq)
    exp4 = []
    for f in sorted(preset.budget_fractions):
        flops = f * full_flops
        steps = max(1, round(f * preset.steps))
        label = f"C{f:g}"
        baseline = add(
            RunSpec(f"baseline-{label}", **base, steps=steps, role=f"baseline at {label}")
        )
        budget = {"fraction": f, "flops": flops, "baseline": baseline, "rules": {}}
        for name in rules or preset.rules:
            budget["rules"][name] = _rule_run(name, flops, preset, vocab_size, ctx, max_steps, add)
        exp4.append(budget)
    full = next(b for b in exp4 if b["fraction"] == max(preset.budget_fractions))
    e5 = PAPER_EPOCHS if PAPER_EPOCHS in epochs else epochs[0]
    exp5 = {
        "epochs": e5,
        "baseline": next(x["regularized"] for x in exp1 if x["epochs"] == e5),
        "adjusted": {name: r["run"] for name, r in full["rules"].items()},
        "fraction": full["fraction"],
    }
    return {
        "runs": {k: asdict(v) for k, v in runs.items()},
        "exp1": exp1,
        "exp2": exp2,
        "exp3": [k for k, v in runs.items() if v.epochs == 1],
        "exp4": exp4,
        "exp5": exp5,
        "corpus": {"train_tokens": train_tokens, "vocab_size": vocab_size, "windows": windows},
    }


def _rule_run(name, flops, preset: Preset, vocab_size, ctx, max_steps, add) -> dict:
    """The size a rule gives for ``flops``, trained one epoch on the same compute."""
    rule = make_rule(name)
    alloc = rule.allocate(flops, ctx)
    cand = near_equal(alloc.params, alloc.count, preset.seq_len, vocab_size)[0]
    d = cand.shape.d_model
    shape = Shape(cand.shape.n_layer, head_count(d), d, preset.seq_len, vocab_size)
    wanted = flops / (train_flops_per_token(shape) * preset.tokens_per_step)
    steps = max(1, min(max_steps, round(wanted)))
    spec = RunSpec(
        f"size-{cand.label()}-{steps}steps",
        shape.n_layer,
        shape.n_head,
        d,
        steps,
        role=f"{name} size",
    )
    counts = param_counts(shape)
    tokens = steps * preset.tokens_per_step
    return {
        "run": add(spec),
        "source": rule.source,
        "target_params": alloc.params,
        "count": alloc.count,
        "params": counts,
        "tokens": tokens,
        "tokens_per_param": tokens / counts["total"],
        "rule_tokens": alloc.tokens,
        "data_limited": steps < round(wanted),
    }
