"""Shared fixtures: small real-text datasets made once per test session; one intra-op
thread per process when the suite runs in parallel workers (scripts/test.sh)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import stdlib_text, write_byte_dataset


def pytest_configure(config):
    """Under pytest-xdist each worker trains on one core: two workers of two threads each
    on two cores slow each other far more than twofold, and the tests' models (0.1-1M
    parameters) train about as fast on one thread (helpers.cli_env). Set before torch is
    first imported, so that it is read as torch starts."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def byte_dataset(tmp_path_factory) -> Path:
    """~1.5 MB of stdlib source as raw bytes (vocab 257)."""
    return write_byte_dataset(tmp_path_factory.mktemp("bytes") / "data", stdlib_text(1_500_000))
