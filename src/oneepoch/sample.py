"""Generate text from a run directory's latest checkpoint.

torch is imported only once the settings, the run and its dataset are known to be usable,
so a mistake is reported at once.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from oneepoch.config import RunConfig, load_toml
from oneepoch.errors import UserError


def _config(run_dir: str | Path) -> RunConfig:
    run = Path(run_dir)
    if not (run / "config.toml").is_file():
        raise UserError(
            f"{run} is not a run directory (no config.toml); give the --out of `oneepoch train`."
        )
    return RunConfig.from_dict(load_toml(run / "config.toml"))


def _load(run_dir: str | Path):
    """(model, config, training state) of the run's latest checkpoint."""
    from oneepoch import checkpoint
    from oneepoch.model import GPT

    run = Path(run_dir)
    cfg = _config(run)
    ckpt = checkpoint.latest(run / "checkpoints")
    if ckpt is None:
        raise UserError(f"{run} has no checkpoint yet; train longer or lower --checkpoint-every.")
    model_state, state = checkpoint.load(ckpt)
    model = GPT(cfg.model)
    model.load_state_dict(model_state)
    model.eval()
    return model, cfg, state


def load_model(run_dir: str | Path):
    model, cfg, _ = _load(run_dir)
    return model, cfg


def check_options(max_new_tokens, temperature, top_k) -> None:
    """Refuse settings that cannot mean anything, each in one sentence."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
        raise UserError(f"--max-new-tokens {max_new_tokens!r} must be a whole number, e.g. 100.")
    if max_new_tokens < 1:
        raise UserError(
            f"--max-new-tokens {max_new_tokens} asks for no text; give a positive count, e.g. 100."
        )
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature):
        raise UserError(
            f"--temperature {temperature} is not a finite number; give 0 for greedy decoding "
            "or a positive value such as 0.8."
        )
    if temperature < 0:
        raise UserError(
            f"--temperature {temperature} is negative; give 0 for greedy decoding or a positive "
            "value such as 0.8."
        )
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
        raise UserError(f"--top-k {top_k} must be a whole number >= 0 (0: no limit), e.g. 50.")


def _run_tokenizer_sha256(run: Path, state: dict) -> str | None:
    """The hash of the tokenizer the run trained with: from its checkpoint, else run.json."""
    if state.get("tokenizer_sha256"):
        return state["tokenizer_sha256"]
    try:
        return json.loads((run / "run.json").read_text())["data"]["tokenizer_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def sample_text(
    run_dir,
    prompt: str,
    max_new_tokens: int = 100,
    temperature: float = 0.8,
    top_k: int | None = 50,
    seed: int = 0,
    data_dir: str | None = None,
    past_eot: bool = False,
) -> str:
    """Continue ``prompt`` (or start a document) with the run's latest checkpoint.

    Generation stops at the end-of-text token, which is not printed: the model has ended
    the document. With ``past_eot`` it goes on for all ``max_new_tokens`` and the output
    shows each end-of-text as the tokenizer writes it.
    """
    from oneepoch.data.dataset import read_manifest
    from oneepoch.data.tokenizer import tokenizer_from_manifest

    check_options(max_new_tokens, temperature, top_k)
    cfg = _config(run_dir)
    data = Path(data_dir or cfg.data.path)
    manifest = read_manifest(data)

    def check_tokenizer(trained_with: str | None) -> None:
        if trained_with is not None and manifest["tokenizer"]["sha256"] != trained_with:
            raise UserError(
                f"{data} has another tokenizer than the one run {run_dir} was trained with "
                "(their hashes differ), so its text would come out as garbage; pass --data the "
                f"dataset the run trained on (it was {cfg.data.path})."
            )

    check_tokenizer(_run_tokenizer_sha256(Path(run_dir), {}))  # from run.json: no torch yet
    model, cfg, state = _load(run_dir)
    check_tokenizer(_run_tokenizer_sha256(Path(run_dir), state))  # the checkpoint's own
    if cfg.model.vocab_size and manifest["tokenizer"]["vocab_size"] != cfg.model.vocab_size:
        raise UserError(
            f"{data} has a vocabulary of {manifest['tokenizer']['vocab_size']} but run "
            f"{run_dir} has {cfg.model.vocab_size}; pass --data the dataset the run trained on."
        )
    import torch

    tok = tokenizer_from_manifest(manifest["tokenizer"], data)
    start = tok.encode(prompt) if prompt else [tok.eot_id]
    torch.manual_seed(seed)
    idx = torch.tensor([start])
    for _ in range(max_new_tokens):
        idx = model.generate(idx, 1, temperature, top_k)
        if not past_eot and int(idx[0, -1]) == tok.eot_id:
            idx = idx[:, :-1]
            break
    ids = idx[0].tolist()
    return tok.decode(ids if prompt else ids[1:])
