"""The job of `oneepoch reproduce`: which runs the paper's five experiments need.

A plan is plain data (written to OUT/job.json): the runs, each a set of settings over the
preset's baseline, and for each experiment which runs it compares. Runs shared by several
experiments are trained once: experiment 1's one-epoch run is also experiment 2's dropout-0
run and experiment 4's baseline at the full budget.

Every run holds its learning rate constant after a fixed warm-up, so a run's first S steps
do not depend on how long it is: a run that equals a longer one in everything but its
length is read from the longer run's first steps (``prefix_of``) instead of being trained
again. That makes experiment 3's long run pay for experiment 1's one-epoch run, and a rule's
run at 1/4 of the compute free where another rule trains the same shape longer.

The allocation rules' runs are the planner's (``oneepoch.plan.planner``): the shape and
steps that keep a rule's tokens per parameter at the experiment's compute, with the
preset's batch and context. Torch-free.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from oneepoch.errors import UserError
from oneepoch.flops import Shape, param_counts, train_flops_per_token
from oneepoch.plan.budget import Budget
from oneepoch.plan.planner import Corpus, Planner, Settings, UniformRate
from oneepoch.plan.rules import make_rule
from oneepoch.reproduce.presets import Preset
from oneepoch.schedule import Cadence

ONE_EPOCH = "one-epoch"
POWER_LAW = "one-epoch-long"
# The paper's multi-epoch baseline is ten epochs; experiment 5 uses it when it is run.
PAPER_EPOCHS = 10.0


@dataclass(frozen=True)
class RunSpec:
    key: str  # the run's name; its folder under runs/seedN/ unless it is a prefix
    n_layer: int
    n_head: int
    d_model: int
    steps: int
    epochs: float = 1.0
    dropout: float = 0.0
    role: str = ""
    batch_size: int | None = None  # None: the preset's
    warmup_steps: int | None = None  # None: the preset's
    prefix_of: str | None = None  # read from this run's first ``steps`` steps, not trained

    def shape(self, seq_len: int, vocab_size: int) -> Shape:
        return Shape(self.n_layer, self.n_head, self.d_model, seq_len, vocab_size)

    @property
    def label(self) -> str:
        return f"{self.n_layer}x{self.n_head}x{self.d_model}"

    def setup(self) -> tuple:
        """Everything that decides what the run computes, except its length."""
        return tuple(v for k, v in asdict(self).items() if k not in _NOT_SETUP)


_NOT_SETUP = ("key", "steps", "role", "prefix_of")


def plan_job(preset: Preset, train_tokens: int, vocab_size: int, epochs=None, rules=None) -> dict:
    """Runs and experiments for ``preset`` on a corpus of ``train_tokens`` training tokens."""
    epochs = tuple(float(e) for e in (epochs or preset.epochs))
    windows = _windows(preset, train_tokens)
    runs: dict[str, RunSpec] = {}

    def add(spec: RunSpec) -> str:
        for key, other in runs.items():  # the same run under another name: train it once
            if other.setup() == spec.setup() and other.steps == spec.steps:
                return key
        runs[spec.key] = spec
        return spec.key

    base = dict(n_layer=preset.n_layer, n_head=preset.n_head, d_model=preset.d_model)
    one = add(RunSpec(ONE_EPOCH, **base, steps=preset.steps, role="one epoch, dropout 0"))
    exp1 = [_exp1_runs(preset, e, base, one, add) for e in epochs]
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
    exp3 = {"power_law": [], "curves": list(exp2.values())}
    if preset.power_law_steps:
        exp3["power_law"].append(
            add(
                RunSpec(
                    POWER_LAW,
                    **base,
                    steps=preset.power_law_steps,
                    role="one epoch, dropout 0, long (experiment 3)",
                    batch_size=preset.power_law_batch,
                    warmup_steps=preset.power_law_warmup,
                )
            )
        )
    exp4 = _exp4_runs(preset, train_tokens, vocab_size, base, rules or preset.rules, add)
    full = next(b for b in exp4 if b["fraction"] == max(preset.budget_fractions))
    e5 = PAPER_EPOCHS if PAPER_EPOCHS in epochs else epochs[0]
    exp5 = {
        "epochs": e5,
        "baseline": next(x["regularized"] for x in exp1 if x["epochs"] == e5),
        "adjusted": {name: r["run"] for name, r in full["rules"].items()},
        "rules": full["rules"],
        "fraction": full["fraction"],
    }
    runs = share_prefixes(runs, preset.eval_every)
    return {
        "runs": {k: asdict(v) for k, v in runs.items()},
        "exp1": exp1,
        "exp2": exp2,
        "exp3": exp3,
        "exp4": exp4,
        "exp5": exp5,
        "corpus": {"train_tokens": train_tokens, "vocab_size": vocab_size, "windows": windows},
    }


def _windows(preset: Preset, train_tokens: int) -> int:
    """The corpus's whole windows (as the sampler cuts them), refused when too few for the
    preset's longest one-epoch run."""
    seq = preset.seq_len
    windows = max(0, (train_tokens - 1) // seq)
    need = max(preset.tokens, preset.power_law_steps * preset.power_law_tokens_per_step)
    if windows * seq < need:
        raise UserError(
            f"the corpus has {train_tokens:,} training tokens, but --preset {preset.name} "
            f"needs at least {need + 1:,} (one epoch of its longest one-epoch run); prepare "
            "a larger corpus or choose a smaller preset."
        )
    return windows


def _exp1_runs(preset: Preset, e: float, base: dict, one: str, add) -> dict:
    """Experiment 1 against ``e`` epochs: the one-epoch run, and the same steps over 1/e of
    the tokens, without and with dropout."""
    if e <= 1:
        raise UserError(f"--epochs values must be above 1, got {e:g}.")
    repeated = add(RunSpec(f"E{e:g}", **base, steps=preset.steps, epochs=e, role=f"{e:g} epochs"))
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
    return {
        "epochs": e,
        "unique_tokens": preset.tokens / e,
        "one_epoch": one,
        "repeated": repeated,
        "regularized": regularized,
        "dropout": p,
    }


def _exp4_runs(preset: Preset, train_tokens: int, vocab_size: int, base: dict, rules, add):
    """Experiment 4: at each fraction of experiment 1's compute, the baseline's run and each
    rule's."""
    seq = preset.seq_len
    base_shape = Shape(preset.n_layer, preset.n_head, preset.d_model, seq, vocab_size)
    full_flops = train_flops_per_token(base_shape) * preset.tokens
    planner = Planner(
        Corpus(train_tokens, vocab_size),
        Settings(seq_len=seq, eval_tokens=preset.eval_tokens, batch_size=preset.batch_size),
        UniformRate(),
    )
    exp4 = []
    for f in sorted(preset.budget_fractions):
        steps = max(1, round(f * preset.steps))
        label = f"C{f:g}"
        baseline = add(
            RunSpec(f"baseline-{label}", **base, steps=steps, role=f"baseline at {label}")
        )
        budget = {"fraction": f, "flops": f * full_flops, "baseline": baseline, "rules": {}}
        for name in rules:
            budget["rules"][name] = rule_run(name, f * full_flops, preset, planner, add)
        exp4.append(budget)
    return exp4


def rule_run(name: str, flops: float, preset: Preset, planner: Planner, add) -> dict:
    """The planner's run for rule ``name`` at compute ``flops`` (for a ratio rule: the shape
    and steps that keep its tokens per parameter), its steps rounded to the evaluation
    cadence so its final loss is measured wherever it is read from."""
    rule = make_rule(name)
    plan = planner.plan(rule, Budget("flops", flops, f"{flops:.3g} FLOPs"))
    shape = plan.candidate.shape
    every = preset.eval_every
    steps = max(1, plan.steps if plan.steps <= every else round(plan.steps / every) * every)
    spec = RunSpec(
        f"size-{plan.candidate.label()}-{steps}steps",
        shape.n_layer,
        shape.n_head,
        shape.d_model,
        steps,
        epochs=plan.epochs,
        role=f"{name} size",
    )
    counts = param_counts(shape)
    tokens = steps * preset.tokens_per_step
    return {
        "run": add(spec),
        "source": rule.source,
        "target_params": plan.target_params,
        "count": plan.count,
        "params": counts,
        "planned_steps": plan.steps,
        "tokens": tokens,
        "tokens_per_param": tokens / counts[plan.count],
        "target_tokens_per_param": plan.target_ratio,
        "epochs": plan.epochs,
        "data_limited": any("usable tokens" in n for n in plan.notes),
        "notes": plan.notes,
        "problem": plan.problem,
    }


def share_prefixes(runs: dict[str, RunSpec], eval_every: int) -> dict[str, RunSpec]:
    """Mark each run that is the beginning of a longer run of the same setup as read from
    it (``prefix_of``): with a constant learning rate after a fixed warm-up the shorter run
    would compute exactly the longer one's first steps. Only where the longer run evaluates
    at the shorter one's last step, so its final loss is measured."""
    out = dict(runs)
    for key, spec in runs.items():
        longest = max(
            (o for o in runs.values() if o.setup() == spec.setup()), key=lambda o: o.steps
        )
        if longest.steps > spec.steps and Cadence(longest.steps, eval_every).evaluates(spec.steps):
            out[key] = replace(spec, prefix_of=longest.key)
    return out


def trained(plan: dict) -> dict[str, RunSpec]:
    """The runs that are trained (the others are read from their first steps)."""
    specs = {k: RunSpec(**v) for k, v in plan["runs"].items()}
    return {k: s for k, s in specs.items() if s.prefix_of is None}


def one_epoch_curves(plan: dict) -> list[str]:
    """Every one-epoch run of the plan, trained or read from a longer run's first steps:
    experiment 3's own first, then experiment 2's, then the rest (experiment 4's baselines
    and allocation rules' runs) in the plan's order. Experiment 3 fits and forecasts them
    all, so its forecast claim is about every one-epoch curve the job has, not a chosen few."""
    first = [*plan["exp3"]["power_law"], *plan["exp3"]["curves"]]
    rest = [k for k, spec in plan["runs"].items() if spec["epochs"] == 1.0 and k not in first]
    return [*dict.fromkeys(first), *rest]
