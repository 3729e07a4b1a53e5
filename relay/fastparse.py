"""The switch between the compiled hot path and its pure-Python twin.

`RELAY_NO_EXTENSIONS=1` in the environment, or a missing/unbuildable extension,
selects the twin.  `IMPLEMENTATION` says which one is in use: "c" or "py".
Both expose the same names, give the same results and raise the same exceptions
(from relay.errors).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

IMPLEMENTATION: str

if TYPE_CHECKING or os.environ.get("RELAY_NO_EXTENSIONS") == "1":
    from relay._fastparse_py import DataReader, DotStuffer, LineReader, ReplyReader, dot_stuff

    IMPLEMENTATION = "py"
else:
    try:
        from relay._fastparse import DataReader, DotStuffer, LineReader, ReplyReader, dot_stuff

        IMPLEMENTATION = "c"
    except ImportError:  # pragma: no cover - depends on the build
        from relay._fastparse_py import (
            DataReader,
            DotStuffer,
            LineReader,
            ReplyReader,
            dot_stuff,
        )

        IMPLEMENTATION = "py"

__all__ = [
    "IMPLEMENTATION",
    "DataReader",
    "DotStuffer",
    "LineReader",
    "ReplyReader",
    "dot_stuff",
]
