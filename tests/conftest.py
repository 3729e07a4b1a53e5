"""Shared fixtures."""

from __future__ import annotations

from types import ModuleType

import pytest
from fastparse_impls import IMPLEMENTATIONS, load_fastparse


@pytest.fixture(params=IMPLEMENTATIONS)
def fp(request: pytest.FixtureRequest) -> ModuleType:
    """Each fastparse implementation in turn."""
    return load_fastparse(request.param)
