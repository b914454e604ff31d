"""The reproduce job's folder (docs/reproduce.md): job.json, a run directory for each seed
and run (runs/seedN/KEY), results.json and the report. The one place that lays it out;
torch-free (the results are computed from it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from oneepoch.rundir import RunDir


@dataclass(frozen=True)
class JobDir:
    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    @property
    def job(self) -> Path:
        return self.path / "job.json"

    @property
    def results(self) -> Path:
        return self.path / "results.json"

    @property
    def report_md(self) -> Path:
        return self.path / "report.md"

    @property
    def report_html(self) -> Path:
        return self.path / "report.html"

    @property
    def figures(self) -> Path:
        return self.path / "figures"

    @staticmethod
    def run_name(seed: int, key: str) -> str:
        """How the job names run ``key`` of ``seed`` (in its queue and in results.json)."""
        return f"seed{seed}/{key}"

    def run(self, seed: int, key: str) -> RunDir:
        return RunDir(self.path / "runs" / self.run_name(seed, key))

    def trained_run(self, seed: int, key: str, plan: dict | None = None) -> RunDir:
        """The folder run ``key`` is read from: its own, or the longer run's it begins
        (``plan``: the job's, read from job.json when not given)."""
        plan = plan or json.loads(self.job.read_text())["plan"]
        return self.run(seed, plan["runs"][key].get("prefix_of") or key)
