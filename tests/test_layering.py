"""The import arrows of ARCHITECTURE.md, checked with `ast`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "relay"

# For each layer: the relay layers it may import (besides itself).
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "model": set(),
    "_fastparse_py": {"errors"},
    "_fastparse": {"errors", "_fastparse_py"},
    "fastparse": {"errors", "_fastparse", "_fastparse_py"},
    "proto": {"fastparse", "errors", "model"},
    "net": {"proto", "fastparse", "errors", "model", "log", "config"},
    "spool": {"model", "errors", "log", "config"},
    "scheduler": {"spool", "model", "errors", "log", "config"},
    "ingest": {"spool", "scheduler", "model", "errors", "log", "config", "dkim"},
    "delivery": {
        "net",
        "proto",
        "scheduler",
        "spool",
        "ingest",
        "model",
        "errors",
        "log",
        "config",
        "fastparse",
    },
    "submission": {"net", "proto", "ingest", "model", "errors", "log", "config", "fastparse"},
    "api": {"ingest", "spool", "model", "errors", "log", "config", "events"},
    # the event hub and webhooks: delivery, ingest and the API report into it (via app)
    "events": {"spool", "model", "errors", "log", "config"},
    "config": {"errors", "model"},
    "log": set(),
    "dkim": {"errors", "model", "log", "config"},
    "supervisor": {"log"},
    # the load generator and sink (`relay bench ...`): SMTP tools for any server
    "loadgen": {"net", "proto", "fastparse", "errors", "model", "log", "config"},
}

# Standard-library and third-party modules the sans-IO core must never import.
PROTO_FORBIDDEN = {
    "trio",
    "lmdb",
    "socket",
    "ssl",
    "time",
    "logging",
    "structlog",
    "asyncio",
    "selectors",
    "threading",
    "datetime",
}


def _layer_of(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0].removesuffix(".py").removesuffix(".pyx")


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against the package
                base = ".".join(("relay", *path.relative_to(ROOT).parent.parts))
                parts = base.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                mod = ".".join(parts + ([node.module] if node.module else []))
                names.append(mod)
                if not node.module:
                    names.extend(f"{mod}.{a.name}" for a in node.names)
            elif node.module:
                names.append(node.module)
                if node.module == "relay":
                    names.extend(f"relay.{a.name}" for a in node.names)
    return names


def _python_files() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("path", _python_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_arrows(path: Path) -> None:
    layer = _layer_of(path)
    if layer in {"__init__", "app", "cli", "testing", "demo"}:
        allowed = None  # composition root and test helpers may import anything
    else:
        assert layer in ALLOWED, f"{layer} is not a known layer: add it to ARCHITECTURE.md"
        allowed = ALLOWED[layer] | {layer}
    for name in _imports(path):
        if name.startswith("relay.testing") or name == "relay.testing":
            assert layer == "testing", f"{path}: nothing under relay/ imports relay.testing"
        if allowed is not None and name.startswith("relay."):
            target = name.split(".")[1]
            assert target in allowed, f"{path}: layer {layer!r} may not import relay.{target}"
        if layer == "proto":
            assert name.split(".")[0] not in PROTO_FORBIDDEN, (
                f"{path}: relay.proto is sans-IO and may not import {name}"
            )
