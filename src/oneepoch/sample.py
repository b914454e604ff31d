"""Generate text from a run directory's latest checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

from oneepoch import checkpoint
from oneepoch.config import RunConfig, load_toml
from oneepoch.errors import UserError
from oneepoch.model import GPT


def load_model(run_dir: str | Path) -> tuple[GPT, RunConfig]:
    run = Path(run_dir)
    if not (run / "config.toml").is_file():
        raise UserError(
            f"{run} is not a run directory (no config.toml); give the --out of `oneepoch train`."
        )
    cfg = RunConfig.from_dict(load_toml(run / "config.toml"))
    ckpt = checkpoint.latest(run / "checkpoints")
    if ckpt is None:
        raise UserError(f"{run} has no checkpoint yet; train longer or lower --checkpoint-every.")
    model_state, _ = checkpoint.load(ckpt)
    model = GPT(cfg.model)
    model.load_state_dict(model_state)
    model.eval()
    return model, cfg


def sample_text(
    run_dir,
    prompt: str,
    max_new_tokens: int = 100,
    temperature: float = 0.8,
    top_k: int | None = 50,
    seed: int = 0,
    data_dir: str | None = None,
) -> str:
    from oneepoch.data.tokenizer import load_tokenizer

    model, cfg = load_model(run_dir)
    tok = load_tokenizer(data_dir or cfg.data.path)
    ids = tok.encode(prompt) if prompt else [tok.eot_id]
    torch.manual_seed(seed)
    out = model.generate(torch.tensor([ids]), max_new_tokens, temperature, top_k)
    return tok.decode(out[0].tolist() if prompt else out[0, 1:].tolist())
