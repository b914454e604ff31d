"""The reproduce job's folder (docs/reproduce.md): job.json, a run directory for each seed
and run (runs/seedN/KEY), results.json and the report. The one place that lays it out;
torch-free (the results are computed from it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from oneepoch.rundir import RunDir, entry


@dataclass(frozen=True)
class JobDir:
    path: Path

    job = entry("job.json")  # the plan, and the settings a rerun must keep
    results = entry("results.json")
    report_md = entry("report.md")
    report_html = entry("report.html")
    figures = entry("figures")

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

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
