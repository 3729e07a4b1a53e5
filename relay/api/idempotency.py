"""Idempotency-Key: a retried request returns the first answer and sends nothing.

Theory of operation: a request with an ``Idempotency-Key`` header is identified by
(API key id, header value) and fingerprinted by SHA-256 of its method, path and
canonical JSON body (key order and spacing do not matter).  Records live in the
"idempotency" aux table of the accounts environment, which every shard shares,
so a retry that lands on another shard (SO_REUSEPORT spreads connections) finds
the first answer; they survive restarts and are purged `ttl` after creation.

Two copies of one request arriving together must not both send.  `reserve()`
holds a lock for the key from the look-up until the answer is stored: within the
process a trio lock, across the shard processes a POSIX record lock on one byte
of ``<accounts>/idempotency.lock`` (4096 stripes chosen by hashing the key; two
keys sharing a stripe merely wait for each other).  POSIX locks belong to a
process, so the trio locks come first and are shared by every service of the
process using the same file.  Waiting for another process is polled (the lock
is never taken blocking on the trio thread) and bounded by the request timeout.

What is stored: answers that stored mail (202, and a partial failure, so that a
retry never sends the stored part twice).  Errors that stored nothing (422, 403,
429, 503 ...) are not kept, so the client may correct the request or try again
later under the same key.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import trio

from relay.api.problems import ApiError
from relay.errors import SpoolError
from relay.log import get_logger

_log = get_logger("api.idempotency")

RECORD_VERSION = 1
KEY_PREFIX = b"k/"
STRIPES = 4096
MAX_KEY_LENGTH = 255
#: Records deleted per purge pass at most (the next pass continues).
PURGE_BATCH = 10_000
_POLL_MIN = 0.001
_POLL_MAX = 0.05


class AuxStore(Protocol):
    """The part of relay.spool's AuxTable this module uses."""

    def get(self, key: bytes) -> Any | None: ...
    def items(self, prefix: bytes = b"") -> Iterator[tuple[bytes, Any]]: ...
    async def put(self, key: bytes, value: Any) -> None: ...
    async def delete(self, key: bytes) -> bool: ...


def fingerprint(method: str, path: str, document: Any) -> bytes:
    """SHA-256 of the request: method, path and canonical JSON body."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{method} {path}\n{canonical}".encode()).digest()


def check_key(value: str) -> str:
    """An Idempotency-Key value: 1-255 printable ASCII characters (else 422)."""
    if not 0 < len(value) <= MAX_KEY_LENGTH or not value.isascii() or not value.isprintable():
        raise ApiError(
            422,
            "Idempotency-Key: 1 to 255 printable ASCII characters",
            field="Idempotency-Key",
        )
    return value


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """The first answer to a keyed request."""

    fingerprint: bytes
    created: float
    status: int
    body: bytes


class _LockFile:
    """The shared lock file of one accounts directory, and the in-process locks."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.users = 0
        self.locks: dict[int, tuple[trio.Lock, int]] = {}  # stripe -> (lock, holders+waiters)


_LOCK_FILES: dict[Path, _LockFile] = {}


class Reservation:
    """Inside `reserve`: the earlier answer, if any, and `save` for the new one."""

    def __init__(
        self, store: IdempotencyStore, key: bytes, fp: bytes, previous: StoredResponse | None
    ) -> None:
        self._store = store
        self._key = key
        self._fingerprint = fp
        self.previous = previous

    async def save(self, status: int, body: bytes) -> None:
        """Keep the answer for retries."""
        record = [RECORD_VERSION, self._fingerprint, self._store.clock(), status, body]
        await self._store.table.put(self._key, record)


class IdempotencyStore:
    """Idempotency records and their locks (see the module docstring)."""

    def __init__(
        self,
        table: AuxStore,
        lock_path: Path,
        *,
        ttl: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.table = table
        self.ttl = ttl
        self.clock = clock
        resolved = lock_path.resolve()
        lock_file = _LOCK_FILES.get(resolved)
        if lock_file is None:
            lock_file = _LOCK_FILES[resolved] = _LockFile(resolved)
        lock_file.users += 1
        self._lock_file: _LockFile | None = lock_file

    def close(self) -> None:
        """Release the lock file (the last user of the process closes it)."""
        lock_file, self._lock_file = self._lock_file, None
        if lock_file is None:
            return
        lock_file.users -= 1
        if lock_file.users == 0:
            del _LOCK_FILES[lock_file.path]
            os.close(lock_file.fd)

    @staticmethod
    def record_key(scope: str, key: str) -> bytes:
        digest = hashlib.sha256(f"{scope}\0{key}".encode()).hexdigest()
        return KEY_PREFIX + digest.encode("ascii")

    def lookup(self, record_key: bytes) -> StoredResponse | None:
        """The stored answer, unless absent, unreadable or expired."""
        value = self.table.get(record_key)
        if not isinstance(value, list | tuple) or len(value) != 5 or value[0] != RECORD_VERSION:
            return None
        _, fp, created, status, body = value
        if created < self.clock() - self.ttl:
            return None
        return StoredResponse(bytes(fp), float(created), int(status), bytes(body))

    @asynccontextmanager
    async def reserve(
        self, scope: str, key: str, fp: bytes, *, timeout: float
    ) -> AsyncIterator[Reservation]:
        """Hold `key` of `scope` (the API key id); 422 if it was used for another request."""
        record_key = self.record_key(scope, key)
        stripe = int.from_bytes(record_key[-8:], "big") % STRIPES
        await self._acquire(stripe, timeout)
        try:
            previous = self.lookup(record_key)
            if previous is not None and previous.fingerprint != fp:
                raise ApiError(
                    422,
                    "Idempotency-Key: already used for a different request",
                    field="Idempotency-Key",
                    error_type="idempotency_conflict",
                )
            yield Reservation(self, record_key, fp, previous)
        finally:
            self._release(stripe)

    async def _acquire(self, stripe: int, timeout: float) -> None:
        lock_file = self._lock_file
        if lock_file is None:
            raise ApiError(503, "the service is stopping")
        lock, users = lock_file.locks.get(stripe, (trio.Lock(), 0))
        lock_file.locks[stripe] = (lock, users + 1)
        acquired = False
        try:
            with trio.fail_after(timeout):
                await lock.acquire()
                acquired = True
                poll = _POLL_MIN
                while True:
                    try:
                        fcntl.lockf(lock_file.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, stripe)
                        return
                    except OSError:
                        await trio.sleep(poll)  # another shard holds it
                        poll = min(poll * 2, _POLL_MAX)
        except BaseException as exc:
            if acquired:
                lock.release()
            self._forget(stripe)
            if isinstance(exc, trio.TooSlowError):
                raise ApiError(
                    503,
                    "Idempotency-Key: a request with this key is still being processed",
                    field="Idempotency-Key",
                    headers={"Retry-After": "1"},
                ) from None
            raise

    def _release(self, stripe: int) -> None:
        lock_file = self._lock_file
        assert lock_file is not None
        fcntl.lockf(lock_file.fd, fcntl.LOCK_UN, 1, stripe)
        lock_file.locks[stripe][0].release()
        self._forget(stripe)

    def _forget(self, stripe: int) -> None:
        lock_file = self._lock_file
        if lock_file is None or stripe not in lock_file.locks:
            return
        lock, users = lock_file.locks[stripe]
        if users <= 1:
            del lock_file.locks[stripe]
        else:
            lock_file.locks[stripe] = (lock, users - 1)

    async def purge(self) -> int:
        """Delete expired records (at most PURGE_BATCH); how many were deleted."""
        cutoff = self.clock() - self.ttl
        expired = []
        for key, value in self.table.items(KEY_PREFIX):
            try:
                created = float(value[2])
            except (TypeError, ValueError, IndexError):
                created = 0.0  # unreadable: nothing to keep it for
            if created < cutoff:
                expired.append(key)
                if len(expired) >= PURGE_BATCH:
                    break
        deleted = 0

        async def delete(keys: list[bytes]) -> None:
            nonlocal deleted
            for key in keys:
                if await self.table.delete(key):
                    deleted += 1

        async with trio.open_nursery() as nursery:  # 16 writers: their deletes share commits
            for i in range(16):
                nursery.start_soon(delete, expired[i::16])
        return deleted

    async def run_purger(self, *, interval: float) -> None:
        """Purge every `interval` seconds until cancelled."""
        while True:
            try:
                deleted = await self.purge()
            except SpoolError as exc:
                _log.error("idempotency.purge_failed", error=repr(exc))
            else:
                if deleted:
                    _log.info("idempotency.purged", records=deleted)
            await trio.sleep(interval)
