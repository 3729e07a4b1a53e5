"""Brute-force protection for AUTH: slow down, then refuse, per client address.

Pure bookkeeping (takes `now`): the server asks `locked(ip, now)` before
considering an AUTH attempt, waits `delay(ip, now)` before answering it, and
reports each failure.  A success does not wipe the address's failures: otherwise
one customer holding valid credentials could interleave its own logins with
guesses at another customer's password and never be locked out.  Failures older
than the window are forgotten; the table is bounded so a flood of addresses
cannot make it grow without limit (the oldest entries go first).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass(slots=True)
class _Record:
    failures: list[float] = field(default_factory=list)
    locked_until: float = 0.0


class AuthGuard:
    """Counts AUTH failures per client address within a window."""

    def __init__(
        self,
        *,
        max_failures: int = 5,
        window: float = 300.0,
        lockout: float = 900.0,
        delay_step: float = 1.0,
        max_delay: float = 5.0,
        max_entries: int = 100_000,
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self.lockout = lockout
        self.delay_step = delay_step
        self.max_delay = max_delay
        self.max_entries = max_entries
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def _recent(self, ip: str, now: float) -> _Record | None:
        rec = self._records.get(ip)
        if rec is None:
            return None
        rec.failures = [t for t in rec.failures if now - t < self.window]
        if not rec.failures and rec.locked_until <= now:
            del self._records[ip]
            return None
        return rec

    def locked(self, ip: str, now: float) -> bool:
        """True while the address is refused (after too many failures)."""
        rec = self._recent(ip, now)
        return rec is not None and rec.locked_until > now

    def delay(self, ip: str, now: float) -> float:
        """Seconds to wait before answering this address's next AUTH attempt."""
        rec = self._recent(ip, now)
        if rec is None:
            return 0.0
        return min(self.max_delay, self.delay_step * len(rec.failures))

    def failure(self, ip: str, now: float) -> bool:
        """Record a failed attempt; True if the address is now locked out."""
        rec = self._recent(ip, now)
        if rec is None:
            rec = self._records[ip] = _Record()
            while len(self._records) > self.max_entries:
                self._records.popitem(last=False)
        rec.failures.append(now)
        if len(rec.failures) >= self.max_failures:
            rec.locked_until = now + self.lockout
            return True
        return False

    def __len__(self) -> int:
        """Addresses with recent failures or a lockout (bounded by `max_entries`)."""
        return len(self._records)
