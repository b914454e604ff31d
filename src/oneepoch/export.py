"""`oneepoch export RUN --format hf OUT`: a run's latest checkpoint as a Hugging Face folder.

oneepoch's GPT is GPT-2's architecture (learned positions, pre-LayerNorm blocks with
biases, eps 1e-5, 4x MLP, head tied to the token embedding) except for the activation: it
uses exact (erf) GELU where GPT-2 uses the tanh approximation, and GPT2Config says so with
``activation_function = "gelu"``. One behaviour differs: transformers' ``generate`` stops
working past ``seq_len`` tokens (``n_positions``), where ``oneepoch sample`` slides its window. The folder holds ``config.json``,
``generation_config.json``, ``model.safetensors`` (GPT-2's parameter names; attention and
MLP weights transposed into GPT-2's Conv1D layout) and the dataset's tokenizer as
``tokenizer.json`` + ``tokenizer_config.json``. Writing it needs no ``transformers``:
``AutoModelForCausalLM.from_pretrained(OUT)`` and ``AutoTokenizer.from_pretrained(OUT)``
load it offline. Tokenizers: a trained BPE or tokenizer.json is copied; the bytes
tokenizer (ids 0-255 = bytes, 256 = end-of-text) and tiktoken ranks files are rewritten
as equivalent byte-level BPE tokenizer.json files. As GPT-2's tokenizer does,
AutoTokenizer reads a literal "<|endoftext|>" in text as the end-of-text token, where
``oneepoch prepare`` keeps it as plain text.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from oneepoch.errors import UserError
from oneepoch.rundir import RunDir

FORMATS = ("hf",)


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is a file; give a new or empty folder to export into.")
    if out.is_dir() and any(out.iterdir()):
        raise UserError(
            f"{out} exists and is not empty; give a new or empty folder (nothing was overwritten)."
        )


# --- weights -----------------------------------------------------------------------------


# oneepoch's block parameter -> GPT-2's (the Linear weights among them are transposed).
BLOCK_NAMES = {
    "ln_1.weight": "ln_1.weight",
    "ln_1.bias": "ln_1.bias",
    "attn.qkv.weight": "attn.c_attn.weight",
    "attn.qkv.bias": "attn.c_attn.bias",
    "attn.proj.weight": "attn.c_proj.weight",
    "attn.proj.bias": "attn.c_proj.bias",
    "ln_2.weight": "ln_2.weight",
    "ln_2.bias": "ln_2.bias",
    "mlp.fc.weight": "mlp.c_fc.weight",
    "mlp.fc.bias": "mlp.c_fc.bias",
    "mlp.proj.weight": "mlp.c_proj.weight",
    "mlp.proj.bias": "mlp.c_proj.bias",
}
TOP_NAMES = ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias")


def hf_state_dict(model_state: dict) -> dict:
    """oneepoch parameter names -> GPT2LMHeadModel's; Linear weights become Conv1D's (in, out).

    No ``lm_head.weight``: GPT-2 ties it to ``wte`` as oneepoch does."""
    out = {}
    for name, t in model_state.items():
        parts = name.split(".", 2)
        if name in TOP_NAMES:
            hf = name
        elif parts[0] == "blocks" and len(parts) == 3 and parts[2] in BLOCK_NAMES:
            hf = f"h.{parts[1]}.{BLOCK_NAMES[parts[2]]}"
            if parts[2].endswith(".weight") and not parts[2].startswith("ln_"):
                t = t.t()
        else:
            raise UserError(
                f"the checkpoint has a parameter {name!r} that GPT-2 has no place for, so "
                "export refuses rather than write a model that differs."
            )
        out[f"transformer.{hf}"] = t.detach().to("cpu").contiguous()
    return out


# ModelConfig fields this export maps onto GPT2Config. A field added later (a different
# activation, no biases, rotary positions...) must be mapped here before runs that set it
# can be exported.
MAPPED_FIELDS = {"n_layer", "n_head", "d_model", "seq_len", "vocab_size", "dropout"}


def check_model_config(m) -> None:
    import dataclasses

    unknown = [
        f.name
        for f in dataclasses.fields(m)
        if f.name not in MAPPED_FIELDS and getattr(m, f.name) != f.default
    ]
    if unknown:
        raise UserError(
            f"the run's model sets {', '.join(unknown)}, which this export does not know how to "
            "express in GPT-2's config, so it refuses rather than write a model that differs."
        )


def hf_config(m, eot_id: int, dtype: str) -> dict:
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": m.vocab_size,
        "n_positions": m.seq_len,
        "n_ctx": m.seq_len,
        "n_embd": m.d_model,
        "n_layer": m.n_layer,
        "n_head": m.n_head,
        "n_inner": 4 * m.d_model,
        # oneepoch's MLP uses F.gelu (exact erf), not GPT-2's tanh approximation ("gelu_new").
        "activation_function": "gelu",
        "resid_pdrop": m.dropout,
        "embd_pdrop": m.dropout,
        "attn_pdrop": m.dropout,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "torch_dtype": dtype,
        "dtype": dtype,
    }


# --- tokenizers ----------------------------------------------------------------------------


def _byte_chars() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte (byte-level BPE spells tokens so)."""
    from oneepoch.data.tokenizer import _gpt2_byte_decoder

    return {b: c for c, b in _gpt2_byte_decoder().items()}


def _bytelevel_json(vocab: dict[str, int], merges: list[list[str]], eot_id: int) -> str:
    """A GPT-2-style byte-level BPE tokenizer.json with ``<|endoftext|>`` as ``eot_id``."""
    from oneepoch.data.tokenizer import EOT

    spec = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": eot_id,
                "content": EOT,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
        ],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": True,
            "use_regex": True,  # GPT-2's split pattern, the same as tiktoken's r50k
        },
        "post_processor": None,
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": True,
            "use_regex": True,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            # tiktoken returns a piece whole when it is a token, before merging: so does this.
            "ignore_merges": True,
            "vocab": vocab,
            "merges": merges,
        },
    }
    return json.dumps(spec, ensure_ascii=False)


def bytes_tokenizer_json() -> str:
    """The bytes tokenizer (id = byte value, 256 = end-of-text) as a merge-free byte-level BPE."""
    chars = _byte_chars()
    return _bytelevel_json({chars[b]: b for b in range(256)}, [], 256)


def tiktoken_tokenizer_json(ranks: dict[bytes, int], eot_id: int) -> str:
    """tiktoken BPE ranks (GPT-2 split pattern) as a byte-level BPE tokenizer.json.

    Each multi-byte token's merge is the last step of tiktoken's own BPE over its bytes using
    only lower ranks, so merge priority follows rank as it does in tiktoken."""
    chars = _byte_chars()
    if any(bytes([b]) not in ranks for b in range(256)):
        raise UserError(
            "the dataset's tiktoken ranks do not contain all 256 single bytes, so no byte-level "
            "BPE tokenizer.json can express them; export cannot write its tokenizer."
        )
    spell = lambda bs: "".join(chars[b] for b in bs)  # noqa: E731
    vocab = {spell(tok): rank for tok, rank in ranks.items()}
    merges = []
    for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(tok) < 2:
            continue
        parts = [bytes([b]) for b in tok]
        while len(parts) > 2:
            best = None
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < rank and (best is None or r < best[0]):
                    best = (r, i)
            if best is None:
                break
            i = best[1]
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        if len(parts) != 2 or any(p not in ranks for p in parts):
            raise UserError(
                f"tiktoken token {tok!r} (rank {rank}) is not a merge of two lower-ranked tokens, "
                "so it has no byte-level BPE equivalent; export cannot write its tokenizer."
            )
        merges.append([spell(parts[0]), spell(parts[1])])
    return _bytelevel_json(vocab, merges, eot_id)


def tokenizer_files(manifest: dict, data_dir: Path) -> dict[str, str | dict]:
    """{file name: text or JSON object} of the tokenizer files the HF folder needs."""
    from oneepoch.data.tokenizer import EOT, load_tokenizer

    tok = load_tokenizer(manifest, data_dir, workers=1)  # checks the file against its hash
    kind = manifest["tokenizer"]["kind"]
    if kind == "bytes":
        spec = bytes_tokenizer_json()
    elif kind == "tiktoken":
        from tiktoken.load import load_tiktoken_bpe

        ranks = load_tiktoken_bpe(str(tok.path), expected_hash=tok.sha256)
        spec = tiktoken_tokenizer_json(ranks, tok.eot_id)
    elif kind in ("bpe", "tokenizer.json"):
        spec = (data_dir / manifest["tokenizer"]["file"]).read_text(encoding="utf-8")
    else:
        raise UserError(f"the dataset's tokenizer kind {kind!r} cannot be exported.")
    eot = EOT
    if hasattr(tok, "tok"):  # a tokenizer.json may call its end-of-text something else
        eot = next(t for t, i in tok.tok.get_vocab(True).items() if i == tok.eot_id)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": eot,
        "eos_token": eot,
        "model_max_length": None,  # filled by the caller
        "clean_up_tokenization_spaces": False,
        "add_prefix_space": False,
    }
    return {"tokenizer.json": spec, "tokenizer_config.json": config}


# --- the command ---------------------------------------------------------------------------


def export(run_dir, out, fmt: str = "hf", data_dir: str | None = None) -> dict:
    """Write RUN's latest checkpoint to ``out`` in ``fmt``; returns what was written."""
    run, out = RunDir(run_dir), Path(out)
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; the formats are: {', '.join(FORMATS)}.")
    _check_out(out)
    from oneepoch import checkpoint
    from oneepoch.data.dataset import read_manifest
    from oneepoch.model import check_state
    from oneepoch.rundir import check_same_tokenizer

    cfg = run.read_config()
    ckpt = checkpoint.latest(run.checkpoints)
    if ckpt is None:
        raise UserError(f"{run} has no checkpoint yet; train longer or lower --checkpoint-every.")
    m = cfg.model
    if m.vocab_size <= 0:
        raise UserError(f"{run.config} has no vocab_size; it was not written by the trainer.")
    data = Path(data_dir or cfg.data.path)
    if not (data / "manifest.json").is_file():
        raise UserError(
            f"the run's dataset {data} is not there (no manifest.json); pass --data DATA_DIR "
            "with the dataset it was trained on, for its tokenizer."
        )
    manifest = read_manifest(data)
    check_same_tokenizer(run.path, data, manifest, cfg.data.path)  # run.json's: before torch
    tok = manifest["tokenizer"]
    if tok["vocab_size"] != m.vocab_size:
        raise UserError(
            f"{data} has a {tok['vocab_size']}-token tokenizer but the run's model has "
            f"{m.vocab_size}; pass --data with the dataset the run was trained on."
        )
    check_model_config(m)
    model_state, state = checkpoint.load(ckpt)
    check_same_tokenizer(run.path, data, manifest, cfg.data.path, state)  # the checkpoint's
    check_state(model_state, m, ckpt, state)
    tensors = hf_state_dict(model_state)
    dtypes = {str(t.dtype).removeprefix("torch.") for t in tensors.values()}
    if len(dtypes) != 1:
        raise UserError(f"checkpoint {ckpt} mixes dtypes {sorted(dtypes)}; export needs one.")
    files = tokenizer_files(manifest, data)
    files["tokenizer_config.json"]["model_max_length"] = m.seq_len
    eot_id = tok["eot_id"]
    config = hf_config(m, eot_id, dtypes.pop())
    generation = {"bos_token_id": eot_id, "eos_token_id": eot_id, "pad_token_id": eot_id}

    from safetensors.torch import save_file

    out_parent = out.resolve().parent
    out_parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out_parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would outlive the rename
    try:
        save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
        texts = {
            "config.json": config,
            "generation_config.json": generation,
            **files,
        }
        for name, content in texts.items():
            text = content if isinstance(content, str) else json.dumps(content, indent=2) + "\n"
            (tmp / name).write_text(text, encoding="utf-8")
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~umask)  # safetensors writes its file 0600
        _check_out(out)  # again: nothing that appeared meanwhile is overwritten
        os.replace(tmp, out)  # onto a missing or empty folder
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {
        "out": str(out),
        "format": fmt,
        "run": str(run),
        "checkpoint": str(ckpt),
        "step": state.get("step"),
        "tokenizer": tok["kind"],
        "files": sorted(p.name for p in out.iterdir()),
    }
