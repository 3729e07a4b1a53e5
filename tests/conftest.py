"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import pytest
import structlog
from fastparse_impls import IMPLEMENTATIONS, load_fastparse


@pytest.fixture(params=IMPLEMENTATIONS)
def fp(request: pytest.FixtureRequest) -> ModuleType:
    """Each fastparse implementation in turn."""
    return load_fastparse(request.param)


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """Commands run in-process (click's CliRunner) configure structlog globally: undo it."""
    yield
    structlog.reset_defaults()
