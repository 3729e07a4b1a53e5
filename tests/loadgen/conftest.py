"""Fixtures for the loadgen tests: trustme certificates."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.testing.tls import TlsFiles, make_tls_files


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    """A trustme CA and a server certificate for 127.0.0.1, localhost and mx.test."""
    return make_tls_files(tmp_path / "tls")
