"""Shared fixtures: small real-text datasets made once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import stdlib_text, write_byte_dataset


@pytest.fixture(scope="session")
def byte_dataset(tmp_path_factory) -> Path:
    """~1.5 MB of stdlib source as raw bytes (vocab 257)."""
    return write_byte_dataset(tmp_path_factory.mktemp("bytes") / "data", stdlib_text(1_500_000))
