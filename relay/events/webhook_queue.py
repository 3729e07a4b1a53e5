"""The durable webhook queue: events wait in the shard spool until a 2xx took them.

Theory of operation: the hub hands every event to `WebhookQueue` (a subscriber:
it only appends to a list).  A flusher task wakes when the list is non-empty,
waits `flush_interval` so events gather, then commits them to the spool's
"webhooks" aux table: for each endpoint that wants some of them, records of at
most `batch_size` events under ``q/<endpoint id>/<8-byte sequence>``.  The
sequence is the commit time in microseconds (kept increasing), so the records of
an endpoint are read back in order, also after a restart.  The senders
(relay.events.webhooks) read an endpoint's oldest records, POST them, and delete
them only after a 2xx: a receiver that is down for hours misses nothing, and a
restart resends what was not acknowledged (at least once; receivers de-duplicate
on the event id).

Between an event and its commit there is at most `flush_interval` (plus the
commit): a crash in that window loses those events.  The in-memory list is
bounded (`max_buffered`); past it -- the spool refusing writes for a long time --
events are dropped and counted, never allowed to exhaust memory.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from relay.config import WebhookConfig
from relay.errors import SpoolError
from relay.events.event import Event
from relay.log import get_logger

_log = get_logger("events.webhooks")

KEY_PREFIX = b"q/"
#: Events kept in memory waiting for their commit, at most.
MAX_BUFFERED = 100_000
#: Pause after a failed queue write before the next try.
WRITE_RETRY = 1.0


class AuxStore(Protocol):
    """The part of relay.spool's AuxTable the queue uses."""

    def items(self, prefix: bytes = b"") -> Iterator[tuple[bytes, Any]]: ...
    async def put(self, key: bytes, value: Any, *, timeout: float = ...) -> None: ...
    async def delete(self, key: bytes, *, timeout: float = ...) -> bool: ...


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A configured webhook receiver."""

    id: str  # 16 hex digits of SHA-256(url): the queue key part, stable across restarts
    url: str
    secret: str
    events: frozenset[str]  # empty: every event

    @classmethod
    def of(cls, config: WebhookConfig) -> Endpoint:
        digest = hashlib.sha256(config.url.encode("utf-8")).hexdigest()[:16]
        return cls(digest, config.url, config.secret, frozenset(config.events))

    def wants(self, event: Event) -> bool:
        return not self.events or event.event in self.events

    @property
    def label(self) -> str:
        """The URL without credentials or query, for logs and metric labels."""
        scheme, _, rest = self.url.partition("://")
        authority, slash, path = rest.partition("/")
        host = authority.rpartition("@")[2]
        return f"{scheme}://{host}{slash}{path.split('?')[0].split('#')[0]}"

    @property
    def prefix(self) -> bytes:
        return KEY_PREFIX + self.id.encode("ascii") + b"/"


@dataclass(frozen=True, slots=True)
class StoredBatch:
    """One committed record: events of one endpoint."""

    key: bytes
    created: float
    events: tuple[dict[str, Any], ...]


@dataclass(slots=True)
class QueueStatistics:
    """Counters of the queue since start, and its sizes now."""

    buffered: int = 0  # events waiting for their commit
    committed: int = 0  # events committed (counted once per endpoint)
    dropped: int = 0  # events lost because the buffer was full
    write_failures: int = 0  # queue writes the spool refused


class WebhookQueue:
    """Buffers events and commits them per endpoint (see the module docstring)."""

    def __init__(
        self,
        table: AuxStore,
        endpoints: Sequence[Endpoint],
        *,
        batch_size: int,
        flush_interval: float,
        max_buffered: int = MAX_BUFFERED,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._table = table
        self.endpoints = tuple(endpoints)
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._max_buffered = max_buffered
        self._clock = clock
        self._buffer: list[Event] = []
        self._pending = trio.Event()
        self._flush_lock = trio.Lock()
        self._last_seq = 0
        self._wakeups = {e.id: trio.Event() for e in self.endpoints}
        self.statistics = QueueStatistics()
        #: Records queued per endpoint id (counted at start, then kept up to date).
        self.records = {e.id: sum(1 for _ in self._scan(e, 1 << 62)) for e in self.endpoints}

    # --- producer side ------------------------------------------------------------------

    def __call__(self, event: Event) -> None:
        """The hub subscriber: keep the event for the next commit."""
        if not any(e.wants(event) for e in self.endpoints):
            return
        if len(self._buffer) >= self._max_buffered:
            self.statistics.dropped += 1
            if self.statistics.dropped % 10_000 == 1:
                _log.error("webhooks.buffer_full", dropped=self.statistics.dropped)
            return
        self._buffer.append(event)
        self.statistics.buffered = len(self._buffer)
        self._pending.set()

    async def run_flusher(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Commit buffered events every `flush_interval` while there are some."""
        task_status.started()
        while True:
            await self._pending.wait()
            await trio.sleep(self._flush_interval)
            if not await self.flush():
                await trio.sleep(WRITE_RETRY)

    async def flush(self) -> bool:
        """Commit what is buffered now; False (events kept) if the spool refused.

        One flush at a time, shielded from cancellation (the spool writes have their
        own deadlines): a stop that cancels the flusher mid-commit loses nothing, and
        the final flush of a stop waits for the one under way.
        """
        ok = False
        async with self._flush_lock:
            with trio.CancelScope(shield=True):
                ok = await self._flush()
        return ok

    async def _flush(self) -> bool:
        events, self._buffer = self._buffer, []
        self._pending = trio.Event()
        self.statistics.buffered = 0
        if not events:
            return True
        writes: list[tuple[Endpoint, bytes, list[dict[str, Any]]]] = []
        for endpoint in self.endpoints:
            wanted = [e.to_json() for e in events if endpoint.wants(e)]
            for start in range(0, len(wanted), self._batch_size):
                writes.append(
                    (endpoint, self._next_key(endpoint), wanted[start : start + self._batch_size])
                )
        done: list[tuple[Endpoint, bytes, list[dict[str, Any]]]] = []
        failed = False
        now = self._clock()

        async def write(item: tuple[Endpoint, bytes, list[dict[str, Any]]]) -> None:
            nonlocal failed
            endpoint, key, batch = item
            try:
                await self._table.put(key, [now, batch])
            except SpoolError as exc:
                failed = True
                self.statistics.write_failures += 1
                _log.error("webhooks.queue_write_failed", endpoint=endpoint.label, error=repr(exc))
                return
            done.append(item)

        async with trio.open_nursery() as nursery:  # concurrent: one group commit
            for item in writes:
                nursery.start_soon(write, item)
        for endpoint, _key, batch in done:
            self.records[endpoint.id] += 1
            self.statistics.committed += len(batch)
            self._wakeups[endpoint.id].set()
        if failed:
            committed = {key for _e, key, _b in done}
            retry = [w for w in writes if w[1] not in committed]
            self._requeue(events, retry)
        return not failed

    def _requeue(
        self, events: list[Event], failed: list[tuple[Endpoint, bytes, list[dict[str, Any]]]]
    ) -> None:
        """Put back the events of failed writes (ahead of newer ones), within the bound."""
        ids = {item["id"] for _e, _k, batch in failed for item in batch}
        again = [e for e in events if e.id in ids]
        room = max(self._max_buffered - len(self._buffer), 0)
        if len(again) > room:
            self.statistics.dropped += len(again) - room
            again = again[len(again) - room :]
        # An event wanted by two endpoints is committed again for both: the one whose
        # write succeeded may get it twice (at least once; receivers de-duplicate).
        self._buffer[:0] = again
        if self._buffer:
            self._pending.set()

    def _next_key(self, endpoint: Endpoint) -> bytes:
        seq = max(self._last_seq + 1, time.time_ns() // 1000)
        self._last_seq = seq
        return endpoint.prefix + seq.to_bytes(8, "big")

    # --- consumer side ------------------------------------------------------------------

    def head(self, endpoint: Endpoint, max_events: int) -> list[StoredBatch]:
        """The endpoint's oldest records holding at most `max_events` events together
        (always at least one record when any is queued)."""
        batches: list[StoredBatch] = []
        total = 0
        for batch in self._scan(endpoint, 1 << 62):
            if batches and total + len(batch.events) > max_events:
                break
            batches.append(batch)
            total += len(batch.events)
        return batches

    def _scan(self, endpoint: Endpoint, limit: int) -> Iterator[StoredBatch]:
        items = self._table.items(endpoint.prefix)
        try:
            for count, (key, value) in enumerate(items):
                if count >= limit:
                    return
                try:
                    created, events = value
                    yield StoredBatch(key, float(created), tuple(events))
                except (TypeError, ValueError):
                    _log.error("webhooks.unreadable_record", key=key.hex())
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # ends the read transaction now, not at garbage collection

    async def remove(self, endpoint: Endpoint, batches: Sequence[StoredBatch]) -> None:
        """Delete records that were delivered (or given up on)."""
        for batch in batches:
            if await self._table.delete(batch.key):
                self.records[endpoint.id] -= 1

    def wakeup(self, endpoint: Endpoint) -> trio.Event:
        """An event set the next time records are committed for `endpoint`."""
        event = self._wakeups[endpoint.id]
        if event.is_set():
            event = self._wakeups[endpoint.id] = trio.Event()
        return event
