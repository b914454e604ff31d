"""prepare(): splits, de-duplication, shards, manifest, reruns and failures."""

import json
import os

import numpy as np
import pytest

from helpers import make_corpus
from oneepoch.data import prepare as prepare_mod
from oneepoch.data.dataset import open_dataset, read_manifest
from oneepoch.data.prepare import MARKER, prepare
from oneepoch.data.shards import open_tokens
from oneepoch.errors import UserError


def documents_of(out, split, eot):
    """The token sequences of a split's documents, read back from its shards."""
    tokens = open_dataset(out).__getattribute__(split)
    arr = tokens.read(0, tokens.num_tokens)
    assert arr[-1] == eot  # every document, the last included, ends with end-of-text
    ends = np.flatnonzero(arr == eot)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [tuple(arr[s:e]) for s, e in zip(starts, ends)]


def test_bytes_dataset_end_to_end(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    out = tmp_path / "data"
    m = prepare([str(corpus)], out, tokenizer="bytes", val_fraction=0.2, seed=3)
    assert (out / "manifest.json").is_file() and not (out / MARKER).exists()
    assert m["format"] == "oneepoch-dataset" and m["version"] == 1 and m["dtype"] == "uint16"
    assert m["tokenizer"]["kind"] == "bytes" and m["tokenizer"]["file"] is None
    assert m["tokenizer"]["vocab_size"] == 257 and m["tokenizer"]["eot_id"] == 256
    train, val = m["splits"]["train"], m["splits"]["val"]
    assert train["documents"] + val["documents"] == 40 and val["documents"] > 0
    chars = sum(len(p.read_text()) for p in corpus.iterdir())
    assert train["chars"] + val["chars"] == chars
    # bytes: one token per byte (ASCII) plus one end-of-text per document
    assert train["tokens"] + val["tokens"] == chars + 40
    assert m["stats"]["chars_per_token"] == 1.0
    assert m["stats"]["val_documents_in_train"] == 0
    src = m["sources"][0]
    assert src["spec"] == str(corpus) and src["documents"] == 40 and src["bad_records"] == 0
    ds = open_dataset(out)
    assert ds.train.num_tokens == train["tokens"] and ds.val.num_tokens == val["tokens"]
    train_docs = documents_of(out, "train", 256)
    val_docs = documents_of(out, "val", 256)
    assert len(train_docs) == train["documents"] and len(val_docs) == val["documents"]
    assert not set(train_docs) & set(val_docs)
    text = bytes(val_docs[0]).decode()
    assert text.startswith("Document ")


def test_split_is_seeded_and_independent_of_order(tmp_path):
    corpus = make_corpus(tmp_path / "corpus", n=60)

    def val_set(out, seed, sources):
        prepare(sources, out, tokenizer="bytes", val_fraction=0.25, seed=seed)
        return set(documents_of(out, "val", 256))

    a = val_set(tmp_path / "a", 1, [str(corpus)])
    b = val_set(tmp_path / "b", 1, [str(corpus)])
    c = val_set(tmp_path / "c", 2, [str(corpus)])
    assert a == b and a != c
    # the same documents arriving in another order land in the same split
    files = sorted(corpus.iterdir())
    half = tmp_path / "half1", tmp_path / "half2"
    for i, path in enumerate(files):
        folder = half[i % 2]
        folder.mkdir(exist_ok=True)
        (folder / path.name).write_text(path.read_text())
    d = val_set(tmp_path / "d", 1, [str(half[1]), str(half[0])])
    assert d == a


def test_val_documents_is_exact(tmp_path):
    corpus = make_corpus(tmp_path / "corpus", n=30)
    m = prepare([str(corpus)], tmp_path / "d", tokenizer="bytes", val_documents=7)
    assert m["splits"]["val"]["documents"] == 7 and m["splits"]["train"]["documents"] == 23
    assert m["prepare"]["val_documents"] == 7
    with pytest.raises(UserError, match="leaves no training documents"):
        prepare([str(corpus)], tmp_path / "e", tokenizer="bytes", val_documents=30)
    assert not (tmp_path / "e").exists()


def test_tiny_corpus_still_gets_a_validation_document(tmp_path):
    corpus = make_corpus(tmp_path / "corpus", n=3)
    m = prepare([str(corpus)], tmp_path / "d", tokenizer="bytes", val_fraction=1e-9)
    assert m["splits"]["val"]["documents"] == 1 and m["splits"]["train"]["documents"] == 2


def test_duplicates_are_removed_and_counted(tmp_path):
    corpus = make_corpus(tmp_path / "corpus", n=10)
    (corpus / "copy.txt").write_text((corpus / "doc003.txt").read_text())
    spaced = "  ".join((corpus / "doc004.txt").read_text().split(" ")) + "\n\n"
    (corpus / "spaced.txt").write_text(spaced)
    m = prepare([str(corpus)], tmp_path / "d", tokenizer="bytes")
    assert m["stats"]["duplicates_removed"] == 2
    assert m["sources"][0]["duplicates_removed"] == 2
    assert m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"] == 10


def test_mixed_sources_each_recorded(tmp_path):
    corpus = make_corpus(tmp_path / "corpus", n=10)
    jsonl = tmp_path / "more.jsonl"
    jsonl.write_text(
        "\n".join(json.dumps({"text": f"json record number {i}"}) for i in range(5))
        + "\nnot json\n"
    )
    m = prepare([str(corpus), str(jsonl)], tmp_path / "d", tokenizer="bytes")
    by_spec = {s["spec"]: s for s in m["sources"]}
    assert by_spec[str(corpus)]["documents"] == 10
    assert by_spec[str(jsonl)]["documents"] == 5
    assert by_spec[str(jsonl)]["bad_records"] == 1
    assert by_spec[str(jsonl)]["bad_record_examples"] == ["more.jsonl:6: not valid JSON"]
    assert m["stats"]["bad_records"] == 1


def test_shards_rotate_and_reads_cross_them(tmp_path):
    corpus = make_corpus(tmp_path / "corpus", n=40)
    out = tmp_path / "d"
    m = prepare([str(corpus)], out, tokenizer="bytes", shard_tokens=1000, val_fraction=0.1)
    shards = m["splits"]["train"]["shards"]
    assert len(shards) > 3
    assert all(s["tokens"] == 1000 for s in shards[:-1]) and 0 < shards[-1]["tokens"] <= 1000
    assert [s["file"] for s in shards] == [f"train_{i:05d}.bin" for i in range(len(shards))]
    whole = np.concatenate([np.asarray(open_tokens(out / s["file"])) for s in shards])
    ds = open_dataset(out)
    assert np.array_equal(ds.train.read(990, 30), whole[990:1020])


def test_repeated_pieces_of_one_line_are_one_document(tmp_path):
    path = tmp_path / "one_line.txt"
    path.write_text("word " * 20000)  # 100,000 characters on one line, cut into equal pieces
    with pytest.raises(UserError, match="only one distinct document"):
        prepare([str(path)], tmp_path / "d", tokenizer="bytes", max_doc_chars=10_000)
    assert not (tmp_path / "d").exists()


def test_distinct_pieces_of_a_long_line(tmp_path):
    path = tmp_path / "one_line.txt"
    path.write_text(" ".join(f"w{i}" for i in range(30000)))
    m = prepare([str(path)], tmp_path / "d", tokenizer="bytes", max_doc_chars=5_000)
    total = m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"]
    assert total == pytest.approx(len(path.read_text()) / 5000, abs=3)
    assert m["stats"]["documents_split"] == 1


def test_rerun_starts_clean_and_keeps_user_files(tmp_path):
    corpus = make_corpus(tmp_path / "corpus", n=40)
    out = tmp_path / "d"
    prepare([str(corpus)], out, tokenizer="bytes", shard_tokens=500)
    many = sorted(p.name for p in out.glob("train_*.bin"))
    (out / "notes.txt").write_text("mine")
    (out / "train_00003.bin.tmp").write_bytes(b"stale")
    prepare([str(corpus)], out, tokenizer="bytes")
    assert sorted(p.name for p in out.glob("train_*")) == ["train_00000.bin"]
    assert len(many) > 1
    assert (out / "notes.txt").read_text() == "mine"
    open_dataset(out)


def test_refuses_foreign_directories(tmp_path):
    corpus = make_corpus(tmp_path / "corpus", n=5)
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    with pytest.raises(UserError, match="not empty and is not a oneepoch dataset"):
        prepare([str(corpus)], other, tokenizer="bytes")
    assert [p.name for p in other.iterdir()] == ["thesis.tex"]
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        prepare([str(corpus)], tmp_path / "afile", tokenizer="bytes")
    with pytest.raises(UserError, match="inside --out"):
        prepare([str(corpus)], tmp_path, tokenizer="bytes")
    empty = tmp_path / "empty"
    empty.mkdir()
    prepare([str(corpus)], empty, tokenizer="bytes")  # an empty directory is fine


def test_failure_midway_leaves_nothing_that_looks_valid(tmp_path, monkeypatch):
    corpus = make_corpus(tmp_path / "corpus", n=40)
    out = tmp_path / "d"
    monkeypatch.setattr(prepare_mod, "BATCH_DOCS", 5)
    calls = {"n": 0}
    real = prepare_mod.BytesTokenizer.encode_batch

    def failing(self, texts):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, texts)

    monkeypatch.setattr(prepare_mod.BytesTokenizer, "encode_batch", failing)
    with pytest.raises(KeyboardInterrupt):
        prepare([str(corpus)], out, tokenizer="bytes", shard_tokens=200)
    assert not out.exists()  # we made it, so we removed it

    # over an existing dataset: it stays, complete and unchanged, and nothing is left beside
    monkeypatch.setattr(prepare_mod.BytesTokenizer, "encode_batch", real)
    prepare([str(corpus)], out, tokenizer="bytes")
    (out / "keep.md").write_text("user file")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls["n"] = 0
    monkeypatch.setattr(prepare_mod.BytesTokenizer, "encode_batch", failing)
    with pytest.raises(KeyboardInterrupt):
        prepare([str(corpus)], out, tokenizer="bytes", shard_tokens=200)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "d"]
    open_dataset(out)


def test_failed_rerun_keeps_the_complete_dataset(tmp_path):
    corpus = make_corpus(tmp_path / "corpus", n=10)
    out = tmp_path / "d"
    prepare([str(corpus)], out, tokenizer="bytes")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    records = tmp_path / "r.jsonl"
    records.write_text('{"text": "one", "id": 1}\n{"text": "two", "id": 2}\n')
    with pytest.raises(UserError, match="no record in .* has a 'txt' field .*--text-field"):
        prepare([str(records)], out, tokenizer="bytes", text_field="txt")
    with pytest.raises(UserError, match="their fields are id, text"):
        prepare([str(records)], out, text_field="txt")  # the BPE's sample pass says so too
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(UserError, match="hold no text"):
        prepare([str(tmp_path / "empty.txt")], out, tokenizer="bytes")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "d", "empty.txt", "r.jsonl"]
    prepare([str(records)], out, tokenizer="bytes")  # a good rerun replaces it
    assert open_dataset(out).manifest["splits"]["train"]["documents"] == 1


def test_second_prepare_is_refused_while_one_writes(tmp_path):
    from oneepoch.locking import hold

    corpus = make_corpus(tmp_path / "corpus", n=5)
    out = tmp_path / "d"
    out.mkdir()
    with hold(out, "prepare"):
        with pytest.raises(UserError, match=f"in use by process {os.getpid()}"):
            prepare([str(corpus)], out, tokenizer="bytes")
    prepare([str(corpus)], out, tokenizer="bytes")
    assert not (out / ".oneepoch.lock").exists()


def test_killed_prepare_is_not_a_dataset_and_rerun_recovers(tmp_path):
    corpus = make_corpus(tmp_path / "corpus", n=10)
    out = tmp_path / "d"
    prepare([str(corpus)], out, tokenizer="bytes")
    # what a SIGKILL mid-way leaves: the marker, shards, a temp shard, no manifest
    (out / "manifest.json").unlink()
    (out / MARKER).write_text("{}")
    (out / "train_00001.bin.tmp").write_bytes(b"partial")
    with pytest.raises(UserError, match="interrupted prepare"):
        read_manifest(out)
    # and what a kill leaves beside it: a half-built folder, or the old dataset swapped out
    # with a file of the user's not yet moved back
    (tmp_path / ".d.prepare-999999").mkdir()
    (tmp_path / ".d.prepare-999999" / "train_00000.bin.tmp").write_bytes(b"partial")
    (tmp_path / ".d.prepare-999998").mkdir()
    (tmp_path / ".d.prepare-999998" / "notes.txt").write_text("mine")
    prepare([str(corpus)], out, tokenizer="bytes")
    assert not (out / MARKER).exists() and not list(out.glob("*.tmp"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "d"]
    assert (out / "notes.txt").read_text() == "mine"
    open_dataset(out)


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: (d / "empty.txt").write_text(""), "hold no text"),
        (lambda d: (d / "blank.md").write_text("  \n\n "), "empty documents"),
        (lambda d: (d / "bin.txt").write_bytes(b"\0\1\2" * 50), "binary files skipped"),
        (lambda d: (d / "bad.jsonl").write_text("nope\n{}\n"), "2 bad records"),
    ],
)
def test_inputs_without_text_fail_clearly(tmp_path, setup, message):
    folder = tmp_path / "in"
    folder.mkdir()
    setup(folder)
    with pytest.raises(UserError, match=message):
        prepare([str(folder)], tmp_path / "out", tokenizer="bytes")
    assert not (tmp_path / "out").exists()


def test_argument_errors(tmp_path):
    corpus = make_corpus(tmp_path / "corpus", n=5)
    out = tmp_path / "out"
    with pytest.raises(UserError, match="between 0 and 1"):
        prepare([str(corpus)], out, val_fraction=1.5)
    with pytest.raises(UserError, match="not both"):
        prepare([str(corpus)], out, val_fraction=0.1, val_documents=2)
    with pytest.raises(UserError, match="too small"):
        prepare([str(corpus)], out, vocab_size=100)
    with pytest.raises(UserError, match="twice"):
        prepare([str(corpus), str(corpus)], out)
    with pytest.raises(UserError, match="no --source"):
        prepare([], out)
    with pytest.raises(UserError, match="does not exist"):
        prepare([str(corpus)], out, tokenizer=str(tmp_path / "missing.json"))
    assert not out.exists()


def test_fingerprint_follows_the_tokens_not_the_paths(tmp_path):
    from oneepoch.data.dataset import dataset_fingerprint

    corpus = make_corpus(tmp_path / "corpus", n=20)
    a = prepare([str(corpus)], tmp_path / "a", tokenizer="bytes", val_fraction=0.3)
    b = prepare([str(corpus)], tmp_path / "b", tokenizer="bytes", val_fraction=0.3)
    c = prepare([str(corpus)], tmp_path / "c", tokenizer="bytes", val_fraction=0.3, seed=1)
    assert (
        dataset_fingerprint(a) == dataset_fingerprint(b) == open_dataset(tmp_path / "a").fingerprint
    )
    assert dataset_fingerprint(c) != dataset_fingerprint(a)
    assert len(dataset_fingerprint(a)) == 64


def test_damaged_manifest_fields_are_named(tmp_path):
    corpus = make_corpus(tmp_path / "corpus", n=5)
    out = tmp_path / "d"
    prepare([str(corpus)], out, tokenizer="bytes")
    m = json.loads((out / "manifest.json").read_text())
    m["tokenizer"]["vocab_size"] = "lots"
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UserError, match="damaged .tokenizer vocab_size is 'lots', not a whole"):
        read_manifest(out)
    with pytest.raises(UserError, match="is a file, not a dataset directory"):
        read_manifest(out / "manifest.json")


def test_rerun_through_a_symlink_replaces_the_folder_it_points_to(tmp_path):
    corpus = make_corpus(tmp_path / "corpus", n=10)
    real = tmp_path / "real"
    prepare([str(corpus)], real, tokenizer="bytes", val_fraction=0.3)
    (tmp_path / "link").symlink_to(real)
    new = prepare([str(corpus)], tmp_path / "link", tokenizer="bytes", val_fraction=0.3, seed=4)
    assert (tmp_path / "link").is_symlink()
    assert open_dataset(tmp_path / "link").manifest["splits"] == new["splits"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "link", "real"]
