"""structlog setup: JSON lines when not on a terminal, pretty when on one.

Secrets never reach the log: any key named like a password, secret, token or
credential is replaced by "[redacted]" before rendering.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog

_SECRET_WORDS = ("password", "passwd", "secret", "token", "credential", "api_key", "auth_data")


_secret_keys: dict[str, bool] = {}  # key -> is it a secret (keys are few; cache the test)


def _is_secret(key: str) -> bool:
    known = _secret_keys.get(key)
    if known is None:
        lowered = key.lower()
        known = any(word in lowered for word in _SECRET_WORDS)
        if len(_secret_keys) < 10_000:
            _secret_keys[key] = known
    return known


def _redact(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in [k for k in event if _is_secret(k)]:
        event[key] = "[redacted]"
    return event


def configure_logging(level: str = "info", *, json: bool | None = None) -> None:
    """Configure structlog for the process (idempotent).

    JSON lines are rendered with orjson straight to bytes (the accounting records are
    on the per-message path); each line is one write, message and newline together,
    so shards sharing stderr never interleave halves of lines.
    """
    if json is None:
        json = not sys.stderr.isatty()
    renderer: Any
    factory: Any
    if json:
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        factory = structlog.BytesLoggerFactory(file=sys.stderr.buffer)
    else:
        renderer = structlog.dev.ConsoleRenderer()
        factory = structlog.WriteLoggerFactory(file=sys.stderr)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )


def _orjson_dumps(event: Any, **_kw: Any) -> bytes:
    # default=str: exceptions, paths and other objects are logged by their text.
    return orjson.dumps(event, default=str, option=orjson.OPT_NON_STR_KEYS)


def get_logger(name: str) -> Any:
    """A bound structlog logger tagged with the component name."""
    return structlog.get_logger(component=name)
