"""`oneepoch prepare` and `oneepoch data inspect` from the command line."""

import json

import pytest

from oneepoch.cli import main


@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(12):
        (folder / f"{i}.txt").write_text(f"Text number {i}: " + "lorem ipsum dolor " * (i + 3))
    (folder / "records.jsonl").write_text('{"text": "a record"}\nbroken line\n')
    return folder


def test_prepare_then_inspect(tmp_path, corpus, capsys):
    out = tmp_path / "data"
    code = main(["prepare", "--source", str(corpus), "--out", str(out), "--vocab-size", "300"])
    assert code == 0
    printed = capsys.readouterr()
    assert "train" in printed.out and "bad records skipped 1" in printed.out
    assert "prepare:" in printed.err  # progress goes to stderr

    assert main(["data", "inspect", str(out), "--json", "--verify"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["splits"]["train"]["documents"] + summary["splits"]["val"]["documents"] == 13
    assert summary["bad_records"] == 1 and summary["duplicates_removed"] == 0
    assert 257 < summary["tokenizer"]["vocab_size"] <= 300 and summary["checksums_verified"]
    assert summary["sources"][0]["bad_record_examples"] == ["records.jsonl:2: not valid JSON"]

    assert main(["data", "inspect", str(out)]) == 0
    text = capsys.readouterr().out
    for word in ("documents", "tokens", "chars/token", "duplicates removed", "sources:"):
        assert word in text


def test_prepare_json_and_options(tmp_path, corpus, capsys):
    out = tmp_path / "data"
    args = ["prepare", "--source", str(corpus), "--out", str(out), "--tokenizer", "bytes"]
    args += ["--val-documents", "3", "--seed", "7", "--workers", "1", "--json", "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr()
    manifest = json.loads(printed.out)
    assert manifest["splits"]["val"]["documents"] == 3 and manifest["prepare"]["seed"] == 7
    assert printed.err == ""


@pytest.mark.parametrize(
    "args, message",
    [
        (["prepare", "--source", "/no/such/path", "--out", "{tmp}/o"], "does not exist"),
        (["prepare", "--source", "{corpus}", "--out", "{tmp}/o", "--val-fraction", "2"], "between"),
        (["data", "inspect", "{tmp}/nothing"], "does not exist"),
        (["data", "inspect", "{corpus}"], "not a prepared dataset"),
    ],
)
def test_user_errors_are_one_sentence(tmp_path, corpus, capsys, args, message):
    args = [a.format(tmp=tmp_path, corpus=corpus) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_data_without_subcommand_prints_help(capsys):
    assert main(["data"]) == 2
    assert "inspect" in capsys.readouterr().out
