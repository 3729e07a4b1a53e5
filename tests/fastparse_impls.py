"""Loading each fastparse implementation (shared by conftest and the differential tests)."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

IMPLEMENTATIONS = ["c", "py"]


def load_fastparse(impl: str) -> ModuleType:
    """The compiled module ("c") or the pure-Python twin ("py").

    The compiled one is skipped only when the run selected the twin
    (RELAY_NO_EXTENSIONS=1); otherwise a missing extension is a failure.
    """
    if impl == "py":
        return importlib.import_module("relay._fastparse_py")
    if os.environ.get("RELAY_NO_EXTENSIONS") == "1":
        pytest.skip("RELAY_NO_EXTENSIONS=1: compiled module not expected")
    try:
        return importlib.import_module("relay._fastparse")
    except ImportError as exc:  # the build was expected and is missing
        pytest.fail(f"compiled relay._fastparse expected but failed to import: {exc}")
