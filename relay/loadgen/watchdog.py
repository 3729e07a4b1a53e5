"""Read timeouts for many connections at the cost of two attribute writes per read.

Theory of operation: moving a cancel scope's deadline around every read costs
trio a context manager and a heap update each time, which shows at thousands of
reads per second.  Instead each connection holds a `Watched`: it sets `waiting`
before a read and clears it after, bumping `reads`.  One `IdleWatchdog` task
looks at every watched connection every `resolution` seconds; a connection
found waiting on the same read for `timeout` seconds has its scope cancelled.
A timeout therefore fires between `timeout` and `timeout + resolution` seconds
after the read began, which is all an idle or reply timeout needs.
"""

from __future__ import annotations

import trio

__all__ = ["IdleWatchdog", "Watched"]


class Watched:
    """One connection's read state, seen by the watchdog."""

    __slots__ = ("_since", "_stamp", "reads", "scope", "waiting")

    def __init__(self, scope: trio.CancelScope) -> None:
        self.scope = scope
        self.waiting = False  # True while a read is in progress
        self.reads = 0  # completed reads
        self._stamp = -1  # `reads` when the watchdog last saw this read waiting
        self._since = 0.0  # when it first saw it

    @property
    def timed_out(self) -> bool:
        """True once the watchdog cancelled the scope."""
        return self.scope.cancel_called


class IdleWatchdog:
    """Cancels the scope of any watched connection stuck in one read for `timeout` s."""

    def __init__(self, timeout: float, *, resolution: float | None = None) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        self.timeout = timeout
        self.resolution = resolution if resolution is not None else min(1.0, timeout / 10)
        self._watched: set[Watched] = set()

    def watch(self, scope: trio.CancelScope) -> Watched:
        """Start watching the connection whose reads run inside `scope`."""
        watched = Watched(scope)
        self._watched.add(watched)
        return watched

    def forget(self, watched: Watched) -> None:
        """Stop watching (the connection is over)."""
        self._watched.discard(watched)

    def __len__(self) -> int:
        return len(self._watched)

    def check(self, now: float) -> None:
        """Cancel what has waited too long (the `run` loop calls this)."""
        for watched in self._watched:
            if not watched.waiting:
                continue
            if watched._stamp != watched.reads:
                watched._stamp = watched.reads
                watched._since = now
            elif now - watched._since >= self.timeout:
                watched.scope.cancel()

    async def run(self) -> None:
        """Check forever, every `resolution` seconds."""
        while True:
            await trio.sleep(self.resolution)
            self.check(trio.current_time())
