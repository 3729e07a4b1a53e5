"""Helpers for the scheduler tests: a wall clock on trio's, frozen autojump, messages.

Under `trio.testing.MockClock(autojump_threshold=0)` the clock jumps to the next
deadline whenever every task is blocked -- including while a task waits for the
spool's writer thread, whose own deadline it could then jump past.  Spool writes
in these tests therefore run under `frozen()`, which turns autojump off while they
are awaited; the timing logic under test runs with autojump on.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import trio
import trio.testing

from relay.model import MessageMeta, NewMessage
from relay.spool import Spool

T0 = 1_700_000_000.0
MAX_AGE = 5 * 86400.0


def wall() -> float:
    """Wall-clock seconds that move with trio's (mock) clock."""
    return T0 + trio.current_time()


@contextmanager
def frozen() -> Iterator[None]:
    """Turn MockClock autojump off for the duration (spool writes)."""
    clock = trio.lowlevel.current_clock()
    if not isinstance(clock, trio.testing.MockClock):
        yield
        return
    saved = clock.autojump_threshold
    clock.autojump_threshold = math.inf
    try:
        yield
    finally:
        clock.autojump_threshold = saved


def message(
    *recipients: str,
    tenant: str = "acme",
    campaign: str = "news",
    sender: str = "news@acme.example",
    send_at: float | None = None,
) -> NewMessage:
    return NewMessage(
        sender=sender,
        recipients=recipients,
        content=b"Subject: hi\r\n\r\nhello\r\n",
        tenant=tenant,
        campaign=campaign,
        send_at=send_at,
    )


async def store(spool: Spool, msgs: Sequence[NewMessage]) -> list[MessageMeta]:
    """Store messages (autojump off while the writer works)."""
    with frozen():
        return await spool.store_many(msgs)
