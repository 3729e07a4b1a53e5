"""Deadlines of the writes waiting for the writer, kept in real time by a ticker thread.

Theory of operation
-------------------
A trio cancel scope per write would cost more than everything else the trio side
of a store does, and its deadline would run on trio's clock -- which a test's
``MockClock(autojump_threshold=0)`` advances as soon as every task waits, i.e.
while the writer thread is busy, so writes would time out at once.

Instead each waiting operation is put in a FIFO bucket keyed by its timeout
(rounded to 0.1 s), so within a bucket deadlines are in order and expiry looks
at the front of each bucket only.  A ticker thread wakes every `TICK` seconds of
real time; when anything waits, it asks the trio thread (``run_sync_soon``) to
expire what is due.  Adding and removing a waiter is a dict insert and delete,
both in the trio thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import trio

from relay.spool.operations import WriteOp

#: How often (seconds of real time) due deadlines are looked for.
TICK = 0.05


class Deadlines:
    """The deadlines of waiting operations (all methods but the ticker: trio thread)."""

    def __init__(
        self, token: trio.lowlevel.TrioToken, on_expired: Callable[[list[WriteOp]], None]
    ) -> None:
        self._token = token
        self._on_expired = on_expired
        self._buckets: dict[float, dict[WriteOp, float]] = {}
        self.waiting = 0  # read by the ticker thread as a hint
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, name="spool-deadlines", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def add(self, op: WriteOp, timeout: float) -> None:
        """Expire `op` after `timeout` seconds unless it is discarded first."""
        key = round(timeout, 1)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = {}
        bucket[op] = time.monotonic() + key
        op.deadline_bucket = bucket
        self.waiting += 1

    def discard(self, op: WriteOp) -> None:
        """Forget `op`'s deadline (it completed or gave up)."""
        bucket = op.deadline_bucket
        if bucket is not None:
            op.deadline_bucket = None
            del bucket[op]
            self.waiting -= 1

    def _expire(self) -> None:
        now = time.monotonic()
        expired: list[WriteOp] = []
        for bucket in self._buckets.values():
            for op, deadline in bucket.items():
                if deadline > now:
                    break
                expired.append(op)
        if expired:
            for op in expired:
                self.discard(op)
            self._on_expired(expired)

    def _tick(self) -> None:
        while not self._stop.wait(TICK):
            if self.waiting:
                try:
                    self._token.run_sync_soon(self._expire)
                except trio.RunFinishedError:
                    return
