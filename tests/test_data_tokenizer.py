"""Tokenizers: trained BPE, tokenizer.json, tiktoken ranks, bytes; load_tokenizer; and the
dataset checks that catch a swapped tokenizer or damaged shards."""

import base64
import json

import numpy as np
import pytest

from helpers import make_corpus
from oneepoch.data.dataset import open_dataset
from oneepoch.data.prepare import prepare
from oneepoch.data.shards import HEADER_SIZE
from oneepoch.data.tokenizer import EOT, BytesTokenizer, load_tokenizer, train_bpe
from oneepoch.errors import UserError

TEXT = "To be, or not to be: that is the question. Ünïcödé ✓ <|endoftext|> stays text."


def test_bytes_tokenizer_round_trip():
    tok = BytesTokenizer()
    ids = tok.encode(TEXT)
    assert max(ids) < 256 and tok.decode(ids) == TEXT
    assert tok.decode([104, 105, 256, 104]) == f"hi{EOT}h"
    (arr,) = tok.encode_batch([TEXT])
    assert arr.dtype == np.uint16 and arr.tolist() == ids


def test_trained_bpe_round_trips_and_keeps_eot_literal_as_text():
    texts = [f"{TEXT} number {i} of the corpus." for i in range(200)]
    tok = train_bpe(iter([texts]), vocab_size=300, workers=1)
    assert tok.kind == "bpe" and tok.vocab_size == 300 and tok.eot_id == 0
    ids = tok.encode(TEXT)
    assert tok.eot_id not in ids and tok.decode(ids) == TEXT
    assert len(ids) < len(TEXT.encode())  # merges learned
    batch = tok.encode_batch(texts[:3])
    assert [b.tolist() for b in batch] == [tok.encode(t) for t in texts[:3]]


def test_tiktoken_encoder_only_when_it_agrees(monkeypatch):
    from oneepoch.data import tokenizer as tokenizer_mod

    texts = [f"{TEXT} number {i} of the corpus." for i in range(100)]
    tok = train_bpe(iter([texts]), vocab_size=300, workers=1)
    assert tok.use_tiktoken(texts) and tok.fast is not None
    assert [a.tolist() for a in tok.encode_batch(texts[:5])] == [
        e.ids for e in tok.tok.encode_batch(texts[:5], add_special_tokens=False)
    ]
    monkeypatch.setattr(tokenizer_mod.TiktokenEngine, "encode", lambda self, t: [1])
    fresh = train_bpe(iter([texts]), vocab_size=300, workers=1)
    assert not fresh.use_tiktoken(texts) and fresh.fast is None


def test_bpe_dataset_and_load_tokenizer(tmp_path):
    corpus = make_corpus(tmp_path / "corpus", n=30)
    out = tmp_path / "d"
    m = prepare([str(corpus)], out, vocab_size=300)
    info = m["tokenizer"]
    assert info["kind"] == "bpe" and info["file"] == "tokenizer.json"
    assert info["vocab_size"] == 300 and (out / "tokenizer.json").is_file()
    assert info["encoder"] == "tiktoken"  # checked to agree with tokenizers, and faster
    ds = open_dataset(out)
    for tok in (load_tokenizer(out), load_tokenizer(ds), load_tokenizer(m, out)):
        assert (tok.vocab_size, tok.eot_id) == (300, info["eot_id"])
    tok = load_tokenizer(str(out))
    tokens = ds.val.read(0, ds.val.num_tokens).tolist()
    first = tokens[: tokens.index(tok.eot_id)]
    assert tok.decode(first).startswith("Document ")
    assert tok.encode(tok.decode(first)) == first
    assert tok.fast is not None
    assert tok.tok.encode(tok.decode(first), add_special_tokens=False).ids == first
    # a tokenizer that is not the one the shards were made with is refused
    path = out / "tokenizer.json"
    path.write_text(path.read_text().replace('"quick"', '"quack"', 1) + " ")
    with pytest.raises(UserError, match="hash differs"):
        open_dataset(out)
    with pytest.raises(UserError, match="hash differs"):
        load_tokenizer(out)


def test_prepare_is_reproducible(tmp_path):
    corpus = make_corpus(tmp_path / "corpus", n=30)
    a = prepare([str(corpus)], tmp_path / "a", vocab_size=300)
    b = prepare([str(corpus)], tmp_path / "b", vocab_size=300)
    assert a["tokenizer"]["sha256"] == b["tokenizer"]["sha256"]
    assert a["splits"] == b["splits"]


def test_given_tokenizer_json_is_reused_even_in_place(tmp_path):
    corpus = make_corpus(tmp_path / "corpus", n=20)
    first = prepare([str(corpus)], tmp_path / "a", vocab_size=280)
    m = prepare([str(corpus)], tmp_path / "b", tokenizer=str(tmp_path / "a" / "tokenizer.json"))
    assert m["tokenizer"]["kind"] == "tokenizer.json"
    assert m["tokenizer"]["eot_id"] == first["tokenizer"]["eot_id"]
    assert m["splits"]["train"]["tokens"] == first["splits"]["train"]["tokens"]
    # the dataset's own tokenizer file, re-prepared into the same directory
    again = prepare([str(corpus)], tmp_path / "a", tokenizer=str(tmp_path / "a" / "tokenizer.json"))
    assert again["splits"]["train"]["tokens"] == first["splits"]["train"]["tokens"]
    open_dataset(tmp_path / "a")


def test_tokenizer_json_without_eot_gets_one(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {chr(c): i for i, c in enumerate(range(97, 123))} | {"[UNK]": 26}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    raw.save(str(tmp_path / "char.json"))
    corpus = make_corpus(tmp_path / "corpus", n=6)
    m = prepare([str(corpus)], tmp_path / "d", tokenizer=str(tmp_path / "char.json"))
    assert m["tokenizer"]["eot_id"] == 27 and m["tokenizer"]["vocab_size"] == 28
    assert m["tokenizer"]["encoder"] == "tokenizers"  # not a byte-level BPE: no tiktoken
    assert load_tokenizer(tmp_path / "d").eot_id == 27


def make_tiktoken_file(path):
    """A ranks file in tiktoken's format: base64 token, space, rank, one per line."""
    ranks = {bytes([i]): i for i in range(256)}
    for word in [b"th", b"he", b"the", b" t", b" the", b"er", b"ow"]:
        ranks[word] = len(ranks)
    lines = (f"{base64.b64encode(token).decode()} {rank}\n" for token, rank in ranks.items())
    path.write_text("".join(lines))
    return len(ranks)


def test_tiktoken_ranks_file(tmp_path):
    n = make_tiktoken_file(tmp_path / "mini.tiktoken")
    corpus = make_corpus(tmp_path / "corpus", n=10)
    out = tmp_path / "d"
    m = prepare([str(corpus)], out, tokenizer=str(tmp_path / "mini.tiktoken"), workers=2)
    info = m["tokenizer"]
    assert info["kind"] == "tiktoken" and info["file"] == "tokenizer.tiktoken"
    assert info["eot_id"] == n and info["vocab_size"] == n + 1
    tok = load_tokenizer(out)
    ids = tok.encode("the other the")
    assert 258 in ids and tok.decode(ids) == "the other the"
    assert tok.eot_id not in tok.encode(EOT)  # literal text, not the special token
    ds = open_dataset(out)
    assert ds.train.read(0, ds.train.num_tokens).max() == n
    with pytest.raises(UserError, match="not a tiktoken"):
        (tmp_path / "junk.tiktoken").write_text("not base64 at all\n")
        prepare([str(corpus)], tmp_path / "e", tokenizer=str(tmp_path / "junk.tiktoken"))


def test_bad_tokenizer_files(tmp_path):
    corpus = make_corpus(tmp_path / "corpus", n=5)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(UserError, match="not a Hugging Face tokenizer.json"):
        prepare([str(corpus)], tmp_path / "o", tokenizer=str(tmp_path / "bad.json"))
    (tmp_path / "vocab.txt").write_text("a\n")
    with pytest.raises(UserError, match="cannot tell what kind"):
        prepare([str(corpus)], tmp_path / "o", tokenizer=str(tmp_path / "vocab.txt"))
    assert not (tmp_path / "o").exists()


@pytest.fixture
def dataset(tmp_path):
    corpus = make_corpus(tmp_path / "corpus", n=30)
    out = tmp_path / "d"
    prepare([str(corpus)], out, tokenizer="bytes", shard_tokens=400)
    return out


def test_truncated_shard_is_refused(dataset):
    path = dataset / "train_00001.bin"
    data = path.read_bytes()
    path.write_bytes(data[:-7])
    with pytest.raises(UserError, match="truncated or corrupted"):
        open_dataset(dataset, verify_checksums=False)
    path.write_bytes(data[:10])
    with pytest.raises(UserError, match="truncated"):
        open_dataset(dataset)


def test_corrupted_shard_is_refused(dataset):
    path = dataset / "train_00000.bin"
    data = bytearray(path.read_bytes())
    data[HEADER_SIZE + 5] ^= 0xFF  # same size, one token changed
    path.write_bytes(bytes(data))
    open_dataset(dataset, verify_checksums=False)  # size checks alone cannot see it
    with pytest.raises(UserError, match="corrupted"):
        open_dataset(dataset)
    data[:8] = b"XXXXXXXX"
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="not a oneepoch shard"):
        open_dataset(dataset, verify_checksums=False)


def test_missing_shard_and_bad_manifest(dataset):
    (dataset / "val_00000.bin").unlink()
    with pytest.raises(UserError, match="missing"):
        open_dataset(dataset)
    (dataset / "manifest.json").write_text("{truncated")
    with pytest.raises(UserError, match="not valid JSON"):
        open_dataset(dataset)


def test_manifest_token_count_mismatch(dataset):
    m = json.loads((dataset / "manifest.json").read_text())
    m["splits"]["train"]["shards"][0]["tokens"] += 1
    (dataset / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UserError, match="manifest says"):
        open_dataset(dataset)
