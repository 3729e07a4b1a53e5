"""A byte budget shared by every session: how much message data may sit in memory.

Message content is held in memory from the first DATA byte until the spool has
committed it.  Each session reserves bytes before taking them in (at DATA, then
as data arrives) and gives them back when the message is stored or refused, so
the total held by all sessions stays under the capacity whatever clients do.
A session that cannot get room waits (reading nothing meanwhile: TCP pushes
back on the client) under its own deadline.
"""

from __future__ import annotations

import trio


class MemoryBudget:
    """Bytes reserved by all sessions together, at most `capacity`."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self._used = 0
        self._lot = trio.lowlevel.ParkingLot()

    @property
    def used(self) -> int:
        """Bytes reserved now."""
        return self._used

    @property
    def waiting(self) -> int:
        """Tasks waiting for room."""
        return len(self._lot)

    def try_acquire(self, nbytes: int) -> bool:
        """Reserve `nbytes` if there is room now; never waits."""
        if not 0 <= nbytes <= self.capacity:
            raise ValueError(f"cannot reserve {nbytes} bytes of {self.capacity}")
        if self._used + nbytes > self.capacity:
            return False
        self._used += nbytes
        return True

    async def acquire(self, nbytes: int) -> None:
        """Reserve `nbytes`, waiting for room; cancellation leaves nothing reserved."""
        if not 0 <= nbytes <= self.capacity:
            raise ValueError(f"cannot reserve {nbytes} bytes of {self.capacity}")
        if self._used + nbytes <= self.capacity:
            await trio.lowlevel.checkpoint_if_cancelled()
            if self._used + nbytes <= self.capacity:
                self._used += nbytes
                await trio.lowlevel.cancel_shielded_checkpoint()
                return
        while self._used + nbytes > self.capacity:
            await self._lot.park()
        self._used += nbytes

    def release(self, nbytes: int) -> None:
        """Give back `nbytes` of an earlier reservation and wake the waiters."""
        if not 0 <= nbytes <= self._used:
            raise ValueError(f"releasing {nbytes} bytes of {self._used} reserved")
        self._used -= nbytes
        if nbytes and self._lot:
            self._lot.unpark_all()
