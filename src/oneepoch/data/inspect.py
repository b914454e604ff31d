"""``oneepoch data inspect``: what a prepared dataset holds, as text or JSON."""

from __future__ import annotations

from pathlib import Path

from oneepoch.data.dataset import SET_ASIDE, open_dataset


def summarize(data_dir: str | Path, verify: bool = False) -> dict:
    """The numbers a person asks about a dataset; opening it checks every shard's size and
    the tokenizer's hash (and, with ``verify``, every shard's checksum)."""
    ds = open_dataset(data_dir, verify_checksums=verify)
    m = ds.manifest
    stats = m.get("stats", {})
    splits = {}
    for name in ("train", "val"):
        info = m["splits"][name]
        splits[name] = {
            "documents": info["documents"],
            "tokens": info["tokens"],
            "chars": info.get("chars"),
            "shards": len(info["shards"]),
        }
    return {
        "path": str(Path(data_dir)),
        "created": m.get("created"),
        "dtype": m["dtype"],
        "tokenizer": m["tokenizer"],
        "splits": splits,
        "chars_per_token": stats.get("chars_per_token"),
        "duplicates_removed": stats.get("duplicates_removed", 0),
        "bad_records": stats.get("bad_records", 0),
        "stats": stats,
        "sources": m.get("sources", []),
        "checksums_verified": verify,
    }


def format_summary(s: dict) -> str:
    tok = s["tokenizer"]
    lines = [
        f"dataset {s['path']} (created {s['created']}, {s['dtype']} tokens)",
        f"tokenizer: {tok['kind']}, vocabulary {tok['vocab_size']:,}, end-of-text id "
        f"{tok['eot_id']}, sha256 {tok['sha256'][:12]}",
        f"{'split':<6} {'documents':>10} {'tokens':>14} {'chars':>15} {'shards':>6}",
    ]
    for name, sp in s["splits"].items():
        chars = f"{sp['chars']:,}" if sp["chars"] is not None else "?"
        lines.append(
            f"{name:<6} {sp['documents']:>10,} {sp['tokens']:>14,} {chars:>15} {sp['shards']:>6}"
        )
    st = s["stats"]
    lines.append(
        f"chars/token {s['chars_per_token']}, duplicates removed {s['duplicates_removed']:,}, "
        f"bad records skipped {s['bad_records']:,}"
    )
    extra = [f"{words} {st[key]:,}" for _, key, words in SET_ASIDE if st.get(key)]
    if st.get("val_documents_in_train"):
        extra.append(f"validation documents found in train {st['val_documents_in_train']:,}")
    if extra:
        lines.append(", ".join(extra))
    lines.append("sources:")
    for src in s["sources"]:
        lines.append(
            f"  {src['spec']} ({src['kind']}): {src.get('documents', 0):,} documents, "
            f"{src.get('tokens', 0):,} tokens, {src.get('bad_records', 0):,} bad records"
        )
        for example in src.get("bad_record_examples", []):
            lines.append(f"    bad record: {example}")
        if src.get("provenance"):
            lines.append(f"    from: {src['provenance']}")
        if src.get("license"):
            lines.append(f"    licence: {src['license']}")
    if s["checksums_verified"]:
        lines.append("all shard checksums verified")
    return "\n".join(lines)
