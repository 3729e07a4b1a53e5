"""Fixtures for the scheduler tests: a real spool on tmp_path (see scheduler_support)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing
from scheduler_support import MAX_AGE, wall

from relay.spool import Spool, open_spool


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "shard-0"


@pytest.fixture
async def spool(spool_dir: Path) -> AsyncIterator[Spool]:
    """A real spool (no fsync: durability is not what these tests are about)."""
    async with open_spool(
        spool_dir, sync=False, map_size=1 << 28, clock=wall, max_age=MAX_AGE
    ) as opened:
        yield opened
        clock = trio.lowlevel.current_clock()
        if isinstance(clock, trio.testing.MockClock):
            clock.autojump_threshold = math.inf  # let the writer close in real time
