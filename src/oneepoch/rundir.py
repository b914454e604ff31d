"""The run directory (docs/formats.md): where each of its files is, the run's status, and
reading and writing them. The one place that names them; torch-free (analysis reads runs).
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from oneepoch.atomic import write_atomic
from oneepoch.config import RunConfig, load_toml
from oneepoch.errors import UserError
from oneepoch.locking import lock_path
from oneepoch.safefs import open_file, refuse_links

# What a trainer writes in a run directory: files, and the folder of checkpoints.
CONFIG, METRICS, INFO, PLAN = "config.toml", "metrics.jsonl", "run.json", "plan.json"
RUN_FILES = (CONFIG, METRICS, INFO, PLAN)
CHECKPOINTS = "checkpoints"


def entry(name: str) -> property:
    """A folder type's path to its entry ``name`` (the type has a ``path``)."""
    return property(lambda self: self.path / name, doc=f"{name} in the folder")


@dataclass(frozen=True)
class RunDir:
    """One run directory: its paths, its status, its run.json."""

    path: Path

    config = entry(CONFIG)
    metrics = entry(METRICS)
    info = entry(INFO)
    plan = entry(PLAN)
    checkpoints = entry(CHECKPOINTS)

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    def __str__(self) -> str:
        return str(self.path)

    @property
    def lock(self) -> Path:
        return lock_path(self.path)

    def holds_run(self) -> bool:
        """A run was started here: the trainer writes config.toml before anything else."""
        return self.config.exists()

    def status(self) -> tuple[str, int]:
        """(status, step) from run.json: "completed", "paused", "interrupted", "failed" or
        "running" with the last step it recorded (-1 when its run.json says nothing of it
        yet, as while a session trains), or ("new", 0) where no run has started."""
        try:
            info = self.read_info()
        except (OSError, ValueError):
            return ("new", 0) if not self.holds_run() else ("running", -1)
        if not isinstance(info, dict):
            return "running", -1
        step = (info.get("final") or {}).get("step")
        return str(info.get("status", "running")), step if isinstance(step, int) else -1

    def read_config(self) -> RunConfig:
        """config.toml; a plain error where there is none (not a run directory)."""
        if not self.config.is_file():
            raise UserError(
                f"{self.path} is not a run directory (no {CONFIG}); give the --out of "
                "`oneepoch train`."
            )
        return RunConfig.from_dict(load_toml(self.config), str(self.config))

    def read_info(self) -> dict:
        """run.json (OSError when absent, ValueError when not JSON)."""
        return read_json(self.info)

    def write_info(self, info: dict) -> None:
        write_json(self.info, info)

    def write_config(self, toml_text: str) -> None:
        write_atomic(self.config, toml_text.encode())

    def open_metrics(self, truncate_to: int | None = None) -> MetricsLog:
        return MetricsLog(self.metrics, truncate_to)

    def check(self) -> None:
        check_run_dir(self.path)


def check_run_dir(run_dir: Path) -> None:
    """Refuse, before anything is written, a run directory where a name the trainer writes
    is a symbolic link (writing through it would change whatever it points to), as is an
    entry of checkpoints/, or is a folder where a file belongs (a file where checkpoints/
    belongs)."""
    for name in (*RUN_FILES, CHECKPOINTS):
        path = run_dir / name
        refuse_links(path)
        if path.exists() and path.is_dir() != (name == CHECKPOINTS):
            kind, keeps = (
                ("a file", "its checkpoints") if name == CHECKPOINTS else ("a folder", "a file")
            )
            raise UserError(
                f"{path} is {kind}, where oneepoch keeps {keeps}; move it out of the run "
                "directory, then try again."
            )
    ckpts = run_dir / CHECKPOINTS
    if ckpts.is_dir():
        refuse_links(*sorted(ckpts.iterdir()))


class MetricsLog:
    """Appends one JSON object per line and flushes it, so a kill loses at most one line."""

    def __init__(self, path: Path, truncate_to: int | None = None):
        self.path = path
        if truncate_to is not None:
            # Resuming: drop lines written after the checkpoint; they are recomputed identically.
            cut = resume_offset(path, truncate_to)
            if os.path.lexists(path):
                with open_file(path, "r+b") as f:
                    f.truncate(cut)
        self._file = open_file(path, "ab")

    def write(self, record: dict) -> None:
        clean = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in record.items()
        }
        self._file.write((json.dumps(clean) + "\n").encode())
        self._file.flush()

    def offset(self) -> int:
        self._file.flush()
        return self._file.tell()

    def sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def resume_offset(path: Path, recorded: int) -> int:
    """Where a resumed run's metrics.jsonl is cut back to: the offset its checkpoint recorded,
    or, when the file no longer reaches it on a line boundary (it was cut short or edited
    since), the end of its last complete line before that, saying on stderr what was lost.
    Never past the file's end: truncate() would pad the gap with NUL bytes."""
    try:
        f = open_file(path, "rb")
    except FileNotFoundError:
        if recorded == 0:
            return 0
        size, cut, last = 0, 0, b""
    else:
        with f:
            size = os.fstat(f.fileno()).st_size
            if size >= recorded and (recorded == 0 or _read_at(f, recorded - 1, recorded) == b"\n"):
                return recorded
            cut = _line_start(f, min(size, recorded))
            last = _read_at(f, _line_start(f, cut - 1), cut) if cut else b""
    try:
        kept = f"its last complete line, step {json.loads(last)['step']}"
    except (ValueError, KeyError, TypeError):
        kept = f"its last complete line (byte {cut:,})" if cut else "nothing"
    print(
        f"note: {path} no longer reaches the {recorded:,} bytes its checkpoint recorded (it "
        f"holds {size:,}, cut short or edited since), so it is cut back to {kept}; the lines "
        "between that and the checkpoint are lost, and training continues from the checkpoint.",
        file=sys.stderr,
    )
    return cut


def _read_at(f, start: int, end: int) -> bytes:
    f.seek(start)
    return f.read(max(0, end - start))


def _line_start(f, end: int, block: int = 1 << 16) -> int:
    """The offset just past the last newline before ``end`` (0 if there is none)."""
    while end > 0:
        start = max(0, end - block)
        i = _read_at(f, start, end).rfind(b"\n")
        if i >= 0:
            return start + i + 1
        end = start
    return 0


def write_json(path: Path, data: dict) -> None:
    write_atomic(path, (json.dumps(data, indent=2) + "\n").encode())


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def trained_tokenizer_sha256(run_dir: Path, train_state: dict | None = None) -> str | None:
    """The hash of the tokenizer a run trained with: from its checkpoint's training state
    when given, else from run.json; None when neither says."""
    if train_state and isinstance(train_state.get("tokenizer_sha256"), str):
        return train_state["tokenizer_sha256"]
    try:
        return RunDir(run_dir).read_info()["data"]["tokenizer_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_same_tokenizer(
    run_dir, data_dir, manifest: dict, trained_on: str, train_state: dict | None = None
) -> None:
    """Refuse a dataset (``--data``) whose tokenizer is not the one the run trained with:
    its ids would be read as other text (same vocabulary size or not)."""
    trained_with = trained_tokenizer_sha256(Path(run_dir), train_state)
    if trained_with is not None and manifest["tokenizer"]["sha256"] != trained_with:
        raise UserError(
            f"{data_dir} has another tokenizer than the one run {run_dir} was trained with "
            "(their hashes differ), so the model's token ids would stand for other text; pass "
            f"--data the dataset the run trained on (it was {trained_on})."
        )
