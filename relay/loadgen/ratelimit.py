"""Rates: per-key token buckets (the sink's receiver policy) and a pacer (the sender's cap).

Both take the time as an argument or from trio's clock, so tests drive them with
`trio.testing.MockClock`.
"""

from __future__ import annotations

from typing import Final

import trio

__all__ = ["Pacer", "TokenBuckets"]

#: Buckets kept before full ones (which carry no state) are forgotten.
MAX_BUCKETS: Final = 10_000


class TokenBuckets:
    """One token bucket per key: `rate` tokens per second, holding at most `burst`."""

    def __init__(self, rate: float, burst: int, *, max_buckets: int = MAX_BUCKETS) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._max = max_buckets
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, as of time)

    def take(self, key: str, now: float) -> bool:
        """Take one token for `key` if there is one; False when the rate is exceeded."""
        tokens, since = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - since) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        if key not in self._buckets and len(self._buckets) >= self._max:
            self._forget_full(now)
        self._buckets[key] = (tokens - 1.0, now)
        return True

    def _forget_full(self, now: float) -> None:
        """Drop the buckets that have refilled: forgetting them changes nothing."""
        burst, rate = float(self.burst), self.rate
        for key in [k for k, (t, s) in self._buckets.items() if t + (now - s) * rate >= burst]:
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)


class Pacer:
    """Spaces events at most `rate` per second, shared by any number of tasks.

    Each `wait()` reserves the next slot (1/rate after the previous one, never in
    the past) and sleeps until it, so concurrent callers are served in turn.
    """

    def __init__(self, rate: float) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.interval = 1.0 / rate
        self._next = -float("inf")

    async def wait(self) -> None:
        """Sleep until this caller's slot."""
        now = trio.current_time()
        slot = max(now, self._next)
        self._next = slot + self.interval
        if slot > now:
            await trio.sleep_until(slot)
