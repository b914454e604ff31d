"""`oneepoch export --format hf`: real transformers (CPU, offline) loads what it writes."""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import pytest

from helpers import TINY, make_corpus, run_cli

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

TRAIN = ["--steps", "12", "--batch-size", "4", "--log-every", "4", "--dtype", "float32", *TINY]
TEXT = "Document 7. the quick brown fox, the lazy dog: über naïve café \n\tend"


def train(data: Path, out: Path) -> Path:
    res = run_cli("train", "--data", str(data), "--out", str(out), *TRAIN)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def export(run: Path, out: Path, *extra: str) -> None:
    res = run_cli("export", str(run), str(out), "--format", "hf", *extra)
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def byte_run(byte_dataset, tmp_path_factory) -> Path:
    return train(byte_dataset, tmp_path_factory.mktemp("bytes-run") / "run")


@pytest.fixture(scope="module")
def bpe_data(tmp_path_factory) -> Path:
    from oneepoch.data.prepare import prepare

    root = tmp_path_factory.mktemp("bpe")
    prepare([str(make_corpus(root / "corpus", n=60))], root / "data", vocab_size=300)
    return root / "data"


def make_tiktoken_file(path: Path) -> None:
    """A ranks file in tiktoken's format: base64 token, space, rank, one per line."""
    ranks = {bytes([i]): i for i in range(256)}
    for word in [b"th", b"he", b"the", b" t", b" the", b"er", b"ow", b"ow ", b" b", b" br"]:
        ranks[word] = len(ranks)
    path.write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in ranks.items()))


@pytest.fixture(scope="module")
def tiktoken_data(tmp_path_factory) -> Path:
    from oneepoch.data.prepare import prepare

    root = tmp_path_factory.mktemp("tiktoken")
    make_tiktoken_file(root / "mini.tiktoken")
    corpus = make_corpus(root / "corpus", n=60)
    prepare([str(corpus)], root / "data", tokenizer=str(root / "mini.tiktoken"))
    return root / "data"


def check_model(run: Path, out: Path) -> None:
    """Same logits as oneepoch's model on the same tokens, and the same greedy continuation."""
    from oneepoch.sample import load_model

    ours, cfg = load_model(run)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert hf.config.model_type == "gpt2" and hf.config.tie_word_embeddings
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.model.vocab_size, (3, cfg.model.seq_len), generator=g)
    with torch.no_grad():
        want, got = ours(ids), hf(ids).logits
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= 1e-4
    prompt = ids[:1, :8]
    new = hf.generate(prompt, max_new_tokens=10, do_sample=False, attention_mask=None)
    assert new.shape == (1, 18)
    assert new.tolist() == ours.generate(prompt, 10, temperature=0).tolist()


def check_tokenizer(out: Path, data: Path, text: str) -> None:
    from oneepoch.data.tokenizer import load_tokenizer

    ours = load_tokenizer(data)
    hf = transformers.AutoTokenizer.from_pretrained(out)
    ids = hf(text, add_special_tokens=False)["input_ids"]
    assert ids == ours.encode(text)
    assert hf.decode(ids) == ours.decode(ids) == text
    assert hf.eos_token_id == ours.eot_id


def test_byte_run_exports_to_transformers(byte_run, byte_dataset, tmp_path):
    out = tmp_path / "hf"
    export(byte_run, out)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    umask = os.umask(0)
    os.umask(umask)
    for p in [out, *out.iterdir()]:  # as readable as any file the user makes
        assert p.stat().st_mode & 0o777 == (0o777 if p.is_dir() else 0o666) & ~umask, p
    check_model(byte_run, out)
    check_tokenizer(out, byte_dataset, TEXT)
    check_tokenizer(out, byte_dataset, (Path(__file__).read_text())[:3000])


def test_bpe_run_exports_its_tokenizer_json(bpe_data, tmp_path):
    run = train(bpe_data, tmp_path / "run")
    out = tmp_path / "hf"
    export(run, out)
    assert (out / "tokenizer.json").read_bytes() == (bpe_data / "tokenizer.json").read_bytes()
    check_model(run, out)
    check_tokenizer(out, bpe_data, TEXT)
    # the exported pair works together as a user would use it
    tok = transformers.AutoTokenizer.from_pretrained(out)
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    enc = tok("Document 3. the quick", return_tensors="pt")
    text = tok.decode(model.generate(**enc, max_new_tokens=8, do_sample=False)[0])
    assert text.startswith("Document 3. the quick")


def test_tiktoken_dataset_exports_an_equivalent_bpe(tiktoken_data, tmp_path):
    from tiktoken.load import load_tiktoken_bpe
    from tokenizers import Tokenizer

    from oneepoch.data.dataset import open_dataset
    from oneepoch.data.tokenizer import load_tokenizer
    from oneepoch.export import tiktoken_tokenizer_json

    ours = load_tokenizer(tiktoken_data)
    ranks = load_tiktoken_bpe(str(tiktoken_data / "tokenizer.tiktoken"))
    hf = Tokenizer.from_str(tiktoken_tokenizer_json(ranks, ours.eot_id))
    ds = open_dataset(tiktoken_data)
    text = ours.decode(ds.train.read(0, ds.train.num_tokens).tolist())
    for piece in [*text.split("<|endoftext|>")[:40], TEXT, "the other the  throw brown"]:
        assert hf.encode(piece, add_special_tokens=False).ids == ours.encode(piece), piece
    run = train(tiktoken_data, tmp_path / "run")
    export(run, tmp_path / "hf")
    check_model(run, tmp_path / "hf")
    check_tokenizer(tmp_path / "hf", tiktoken_data, TEXT)


def test_tiktoken_ranks_without_a_merge_path_are_refused():
    from oneepoch.errors import UserError
    from oneepoch.export import tiktoken_tokenizer_json

    ranks = {bytes([i]): i for i in range(256)} | {b"abc": 256}  # no "ab" or "bc"
    with pytest.raises(UserError, match="not a merge of two lower-ranked tokens"):
        tiktoken_tokenizer_json(ranks, 257)


def one_sentence_error(capsys, *args: str) -> str:
    from oneepoch.cli import main

    assert main(["export", *args]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_input_is_one_sentence_and_overwrites_nothing(byte_run, tmp_path, capsys):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    err = one_sentence_error(capsys, str(byte_run), str(full))
    assert "not empty" in err and (full / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in full.iterdir()) == ["keep.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left behind

    assert "unknown export format" in one_sentence_error(
        capsys, str(byte_run), str(tmp_path / "a"), "--format", "onnx"
    )
    assert "not a run directory" in one_sentence_error(capsys, str(tmp_path), str(tmp_path / "a"))
    empty_run = tmp_path / "no-ckpt"
    empty_run.mkdir()
    shutil.copy(byte_run / "config.toml", empty_run / "config.toml")
    assert "no checkpoint" in one_sentence_error(capsys, str(empty_run), str(tmp_path / "a"))
    assert "is not there" in one_sentence_error(
        capsys, str(byte_run), str(tmp_path / "a"), "--data", str(tmp_path / "nowhere")
    )
    assert not (tmp_path / "a").exists()
    # an existing empty folder is fine
    (tmp_path / "empty").mkdir()
    export(byte_run, tmp_path / "empty")
    assert (tmp_path / "empty" / "model.safetensors").is_file()


def test_what_gpt2_cannot_express_is_refused(byte_run):
    import dataclasses

    from oneepoch import checkpoint
    from oneepoch.config import ModelConfig
    from oneepoch.errors import UserError
    from oneepoch.export import check_model_config, hf_state_dict
    from oneepoch.model import check_state

    state, _ = checkpoint.load(checkpoint.latest(byte_run / "checkpoints"))
    with pytest.raises(UserError, match="no place for"):
        hf_state_dict({**state, "blocks.0.attn.rotary.freqs": torch.zeros(4)})
    cfg = ModelConfig(n_layer=2, n_head=2, d_model=64, seq_len=64, vocab_size=257)
    check_state(state, cfg, byte_run)
    del state["blocks.1.mlp.fc.bias"]
    with pytest.raises(UserError, match="blocks.1.mlp.fc.bias"):
        check_state(state, cfg, byte_run)

    @dataclasses.dataclass
    class Later(ModelConfig):
        activation: str = "gelu"

    check_model_config(Later())  # a new setting left at its default is what was exported
    with pytest.raises(UserError, match="sets activation"):
        check_model_config(Later(activation="swiglu"))
