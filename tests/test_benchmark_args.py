"""Benchmarks refuse choices they do not know instead of silently running nothing."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "throughput.py"


@pytest.mark.parametrize(("flag", "value"), [("--modes", "compile"), ("--dtypes", "fp16")])
def test_unknown_choice_is_an_error(flag, value):
    res = subprocess.run(
        [sys.executable, str(BENCH), flag, value], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 2
    assert f"unknown {value}" in res.stderr and "Traceback" not in res.stderr
