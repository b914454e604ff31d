"""Generate text from a run directory's latest checkpoint.

torch is imported only once the settings, the run and its dataset are known to be usable,
so a mistake is reported at once.
"""

from __future__ import annotations

import math
from pathlib import Path

from oneepoch.errors import UserError
from oneepoch.rundir import RunDir


def _load(run_dir: str | Path):
    """(model, config, training state) of the run's latest checkpoint."""
    from oneepoch import checkpoint
    from oneepoch.model import GPT, check_state

    run = RunDir(run_dir)
    cfg = run.read_config()
    ckpt = checkpoint.latest(run.checkpoints)
    if ckpt is None:
        raise UserError(f"{run} has no checkpoint yet; train longer or lower --checkpoint-every.")
    model_state, state = checkpoint.load(ckpt)
    check_state(model_state, cfg.model, ckpt, state)
    model = GPT(cfg.model)
    model.load_state_dict(model_state)
    model.eval()
    return model, cfg, state


def load_model(run_dir: str | Path):
    model, cfg, _ = _load(run_dir)
    return model, cfg


def check_options(max_new_tokens, temperature, top_k, prompt: str = "", seed: int = 0) -> None:
    """Refuse settings that cannot mean anything, each in one sentence."""
    from oneepoch.config import check_seed

    check_seed(seed, "--seed")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as exc:  # bytes the shell passed that are not UTF-8
        raise UserError(
            f"--prompt is not valid UTF-8 text (an undecodable byte at character {exc.start}); "
            "give the prompt as UTF-8."
        ) from None
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
    from oneepoch.rundir import check_same_tokenizer

    check_options(max_new_tokens, temperature, top_k, prompt, seed)
    cfg = _config(run_dir)
    data = Path(data_dir or cfg.data.path)
    manifest = read_manifest(data)

    check_same_tokenizer(run_dir, data, manifest, cfg.data.path)  # run.json's: no torch yet
    model, cfg, state = _load(run_dir)
    check_same_tokenizer(run_dir, data, manifest, cfg.data.path, state)  # the checkpoint's
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


def _config(run_dir: str | Path):
    """The run's config.toml (the tests replace it with a scripted model's)."""
    return RunDir(run_dir).read_config()
