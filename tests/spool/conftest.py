"""Fixtures of the spool tests (helpers are in spool_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    """A shard directory that does not exist yet."""
    return tmp_path / "shard0"
