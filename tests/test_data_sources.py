"""Reading sources: text files, folders, JSONL (plain/gz/zst), Parquet, Hugging Face."""

import gzip
import json
import tracemalloc

import pytest

from oneepoch.data import sources
from oneepoch.data.resolve import resolve_source
from oneepoch.data.sources import (
    HFStreamSource,
    Tally,
    read_text_pieces,
    split_long,
)
from oneepoch.errors import UserError


def docs(source, max_chars=1 << 20):
    tally = Tally()
    out = [text for _, text in source.documents(tally, max_chars)]
    return out, tally.counts[source.spec]


def write_jsonl(path, lines):
    path.write_bytes(b"".join(line + b"\n" for line in lines))


GOOD = [json.dumps({"text": f"record {i}", "id": i}).encode() for i in range(3)]
BAD = [
    b"{not json",
    json.dumps({"body": "no text field"}).encode(),
    json.dumps({"text": 42}).encode(),
    json.dumps([1, 2]).encode(),
    b'{"text": "caf\xff"}',  # invalid UTF-8
    b"",  # blank lines are not records
]


def test_split_long_cuts_at_breaks_and_keeps_everything():
    text = ("word " * 50 + "\n\n") * 40
    pieces = list(split_long(text, 700))
    assert "".join(pieces) == text
    assert all(len(p) <= 700 for p in pieces)
    assert all(p.endswith(("\n\n", " ")) for p in pieces[:-1])
    assert list(split_long("x" * 2500, 1000)) == ["x" * 1000, "x" * 1000, "x" * 500]
    assert list(split_long("short", 1000)) == ["short"]


def test_text_file_pieces_bom_and_invalid_utf8(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"\xef\xbb\xbfHello \xff\xfe world\n" + "é".encode() * 3000)
    tally = Tally()
    pieces = list(read_text_pieces(path, 1000, tally, "k"))
    text = "".join(pieces)
    assert text.startswith("Hello \ufffd\ufffd world\n")
    assert text.endswith("é" * 3000)
    assert all(len(p) <= 1000 for p in pieces)
    assert tally.counts["k"]["invalid_utf8_bytes"] == 2
    assert tally.counts["k"]["documents_split"] == 1


def test_huge_single_line_is_read_with_bounded_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "READ_CHUNK", 1 << 18)
    path = tmp_path / "line.txt"
    with open(path, "wb") as f:
        for _ in range(64):
            f.write(b"abcdefgh" * (1 << 15))  # 16 MiB, no newline at all
    tracemalloc.start()
    total, longest = 0, 0
    for piece in read_text_pieces(path, 1 << 19, Tally(), "k"):
        total += len(piece)
        longest = max(longest, len(piece))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert total == 16 << 20 and longest <= 1 << 19
    assert peak < 4 << 20, peak  # a few pieces, never the whole line


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.zst"])
def test_jsonl_counts_bad_records(tmp_path, suffix):
    import zstandard

    raw = b"".join(line + b"\n" for line in GOOD[:1] + BAD + GOOD[1:])
    path = tmp_path / f"data{suffix}"
    if suffix.endswith(".gz"):
        raw = gzip.compress(raw)
    elif suffix.endswith(".zst"):
        raw = zstandard.ZstdCompressor().compress(raw)
    path.write_bytes(raw)
    src = resolve_source(str(path))
    texts, counts = docs(src)
    assert texts == ["record 0", "record 1", "record 2"]
    assert counts["bad_records"] == 5


def test_jsonl_custom_field_and_overlong_record(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "MAX_RECORD_BYTES", 100)
    path = tmp_path / "d.jsonl"
    write_jsonl(
        path,
        [
            json.dumps({"body": "kept"}).encode(),
            json.dumps({"body": "x" * 500}).encode(),
            json.dumps({"body": "also kept"}).encode(),
        ],
    )
    tally = Tally()
    src = resolve_source(str(path), text_field="body")
    assert [t for _, t in src.documents(tally, 1000)] == ["kept", "also kept"]
    assert tally.counts[str(path)]["bad_records"] == 1
    assert "record over 100 bytes" in tally.examples[str(path)][0]


def test_truncated_gzip_is_an_error(tmp_path):
    path = tmp_path / "d.jsonl.gz"
    data = gzip.compress(b"".join(g + b"\n" for g in GOOD * 200))
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated|corrupted"):
        docs(resolve_source(str(path)))


def test_parquet_column_and_nulls(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"content": ["one", None, "three"], "n": [1, 2, 3]}), path)
    texts, counts = docs(resolve_source(str(path), text_field="content"))
    assert texts == ["one", "three"] and counts["bad_records"] == 1
    with pytest.raises(UserError, match="no column 'text'"):
        docs(resolve_source(str(path)))


def test_folder_skips_binary_and_counts(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "b" / "c.md").write_text("gamma")
    (tmp_path / "b" / "d.jsonl").write_text(json.dumps({"text": "delta"}) + "\n")
    (tmp_path / "bin.txt").write_bytes(b"\x00\x01\x02binary" * 100)
    (tmp_path / "image.png").write_bytes(b"\x89PNG\x00")
    (tmp_path / ".hidden.txt").write_text("hidden")
    texts, counts = docs(resolve_source(str(tmp_path)))
    assert texts == ["alpha", "gamma", "delta"]
    assert counts["binary_files_skipped"] == 1
    assert counts["files_ignored"] == 1


def test_bad_paths_say_what_to_do(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        resolve_source(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.bin").write_bytes(b"1")
    with pytest.raises(UserError, match=r"contains no \.txt"):
        resolve_source(str(tmp_path / "empty"))
    (tmp_path / "blob.txt").write_bytes(b"\x00" * 100)
    with pytest.raises(UserError, match="binary"):
        resolve_source(str(tmp_path / "blob.txt"))
    with pytest.raises(UserError, match="names no dataset"):
        resolve_source("hf:")


def test_saved_hf_dataset_and_dataset_dict(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": ["one", "two", None], "x": [1, 2, 3]})
    ds.save_to_disk(str(tmp_path / "single"))
    texts, counts = docs(resolve_source(str(tmp_path / "single")))
    assert texts == ["one", "two"] and counts["bad_records"] == 1
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"story": ["a", "b"]}),
            "test": datasets.Dataset.from_dict({"story": ["c"]}),
        }
    )
    dd.save_to_disk(str(tmp_path / "dict"))
    src = resolve_source(str(tmp_path / "dict"), text_field="story")
    assert src.kind == "hf-disk"
    assert sorted(docs(src)[0]) == ["a", "b", "c"]
    with pytest.raises(UserError, match="no column 'text'"):
        docs(resolve_source(str(tmp_path / "dict")))


def test_hf_stream_uses_load_dataset_streaming(monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = {}

    def fake_load_dataset(name, config, split, streaming):
        calls.update(name=name, config=config, split=split, streaming=streaming)
        return datasets.Dataset.from_dict({"text": ["x", "y"]}).to_iterable_dataset()

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    # the Hub stands in here, reachable (tests have no network)
    monkeypatch.setattr(HFStreamSource, "check_reachable", lambda self: None)
    src = resolve_source("hf:someone/corpus:en")
    assert docs(src)[0] == ["x", "y"]
    assert calls == dict(name="someone/corpus", config="en", split="train", streaming=True)
    assert "someone/corpus" in src.entries()[0]["provenance"]

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UserError, match="could not stream"):
        docs(resolve_source("hf:someone/corpus"))
