"""The spool of one shard: durable message storage on LMDB (see writer.py, env.py).

Writes (`store`, `record_results`, `reschedule`, `delete`, `purge_completed`, aux
puts) are built here, in the trio thread, then handed to the environment's one
writer thread and awaited under a deadline.  Reads (`get`, `read_content`,
`iter_schedule`, ...) are plain calls on read transactions: LMDB readers never
block and never wait for the writer.

A reader that meets a record it cannot decode logs it, skips it and asks the
writer to file it in the quarantine (records are never silently dropped, and a
bad record never stops start-up or recovery).
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import lmdb
import trio

from relay.errors import RecordError, SpoolIOError, SpoolTimeoutError, UnknownMessageError
from relay.log import get_logger
from relay.model import (
    Attempt,
    MessageMeta,
    NewMessage,
    Recipient,
    RecipientResult,
    ScheduleRecord,
    new_message_id,
)
from relay.spool import records
from relay.spool.aux import AuxTable
from relay.spool.deadlines import Deadlines
from relay.spool.env import (
    COMPLETED,
    CONTENT,
    DEFAULT_AUX_TABLES,
    META,
    QUARANTINE,
    SCHEDULE,
    SpoolEnv,
    open_environment,
)
from relay.spool.operations import (
    DeleteOp,
    PurgeCompletedOp,
    QuarantineOp,
    RecordResultsOp,
    RescheduleOp,
    StoreOp,
    WriteOp,
)
from relay.spool.writer import Writer

_log = get_logger("spool")

#: Longest message id accepted (LMDB keys are at most 511 bytes; the schedule key adds 8).
MAX_ID_LENGTH = 255
#: Completed records dropped per transaction by `purge_completed`.
PURGE_BATCH = 5_000
#: How long closing waits for the writer to finish what is queued.
CLOSE_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class SpoolStatistics:
    """A snapshot of a spool's counters (writer counters since it was opened)."""

    stored: int  # messages committed
    commits: int  # committed write transactions: one fsync each when `sync`
    batches: int  # batches the writer took from its queue
    ops: int  # write operations committed
    largest_batch: int
    failed_commits: int  # transactions aborted by an LMDB error (full map, I/O)
    in_flight: int  # write operations queued or being committed
    queued: int  # messages in the queue now
    completed: int  # completed records kept now
    quarantined: int  # records in the quarantine now
    sync: bool  # whether commits fsync


@dataclass(frozen=True, slots=True)
class QuarantinedRecord:
    """One record filed in the quarantine, with why and when."""

    db: str  # the database it came from
    key: bytes
    raw: bytes  # its bytes, as found
    reason: str
    at: float


def _id_key(message_id: str) -> bytes | None:
    """The key of a message id, or None if no message can have that id."""
    if not 0 < len(message_id) <= MAX_ID_LENGTH or not message_id.isascii():
        return None
    return message_id.encode("ascii")


class Spool:
    """One shard's spool.  Create it with `open_spool`."""

    def __init__(
        self,
        senv: SpoolEnv,
        *,
        token: trio.lowlevel.TrioToken,
        max_age: float,
        completed_ttl: float,
        commit_queue: int,
        sync: bool,
        clock: Callable[[], float],
        max_batch: int,
        max_batch_bytes: int,
    ) -> None:
        if commit_queue < 1:
            raise ValueError("commit_queue must be positive")
        self.path: Path = senv.path
        self._senv = senv
        self._max_age = max_age
        self._completed_ttl = completed_ttl
        self._commit_queue = commit_queue
        self._slots = trio.Semaphore(commit_queue, max_value=commit_queue)
        self._sync = sync
        self._clock = clock
        self._closed = False
        self._reported: set[tuple[str, bytes]] = set()
        self._aux = {
            name: AuxTable(name, senv, self._submit, self._report_undecodable) for name in senv.aux
        }
        self._deadlines = Deadlines(token, self._on_expired)
        self._writer = Writer(
            senv,
            token=token,
            on_done=self._on_done,
            max_batch=max_batch,
            max_batch_bytes=max_batch_bytes,
        )

    # --- writing -------------------------------------------------------------------------

    async def store(self, msg: NewMessage, *, timeout: float = 30.0) -> MessageMeta:
        """Store one message durably; returns its metadata (with its id).

        Returns only once the transaction holding it has committed (with fsync).
        `SpoolTimeoutError` when that did not happen within `timeout` seconds: if
        the writer had already taken the message, it is stored or not atomically
        and the caller does not learn its id; otherwise it is not stored.
        """
        metas: list[MessageMeta] = await self._submit(self._store_op((msg,)), timeout)
        return metas[0]

    async def store_many(
        self, msgs: Sequence[NewMessage], *, timeout: float = 30.0
    ) -> list[MessageMeta]:
        """Store several messages in one transaction: all or none."""
        if not msgs:
            return []
        metas: list[MessageMeta] = await self._submit(self._store_op(msgs), timeout)
        return metas

    def _store_op(self, msgs: Sequence[NewMessage]) -> StoreOp:
        now = self._clock()
        expires = now + self._max_age
        metas = []
        entries = []
        for msg in msgs:
            if not msg.recipients:
                raise ValueError("a message needs at least one recipient")
            message_id = msg.message_id or new_message_id(now)
            mid = _id_key(message_id)
            if mid is None:
                raise ValueError(f"invalid message id {message_id!r}")
            # Positional: a third cheaper than keywords on this hot path; the field
            # order is MessageMeta's (pinned by the store round-trip tests).
            meta = MessageMeta(
                message_id,
                msg.sender,
                tuple([Recipient(address) for address in msg.recipients]),
                now,
                expires,
                now if msg.send_at is None else msg.send_at,
                len(msg.content),
                0,
                msg.tenant,
                msg.campaign,
                tuple(msg.tags),
                dict(msg.metadata),
                msg.send_at,
                msg.smtputf8,
                msg.body_8bit,
            )
            metas.append(meta)
            entries.append(
                (
                    mid,
                    records.encode_meta(meta),
                    records.encode_content(msg.content),
                    records.time_key(meta.next_attempt, mid),
                    records.encode_schedule(meta),
                )
            )
        return StoreOp(metas, entries, self._senv.page_size)

    async def record_results(
        self,
        message_id: str,
        results: Sequence[RecipientResult],
        *,
        next_attempt: float | None,
        attempt: Attempt | None = None,
        timeout: float = 30.0,
    ) -> MessageMeta:
        """Apply per-recipient results of a delivery attempt.

        Each matching recipient that is not final yet takes its result's status and
        reply and counts one more attempt (results for final or unknown recipients
        are ignored); the message counts one more attempt; `attempt` joins the
        history (the last 100 are kept); `next_attempt` moves the message (None
        leaves it).  When every recipient is final the message moves to the
        completed records (content deleted) and is kept `completed_ttl`.
        `UnknownMessageError` if it is not queued; `RecordError` if its metadata
        was undecodable (it has then been quarantined).
        """
        op = RecordResultsOp(_checked_id(message_id), results, next_attempt, attempt, self._clock())
        meta: MessageMeta = await self._submit(op, timeout)
        return meta

    async def reschedule(
        self, message_id: str, next_attempt: float, *, timeout: float = 30.0
    ) -> MessageMeta:
        """Set a queued message's next attempt time (`UnknownMessageError` if not queued)."""
        op = RescheduleOp(_checked_id(message_id), next_attempt, self._clock())
        meta: MessageMeta = await self._submit(op, timeout)
        return meta

    async def delete(self, message_ids: Sequence[str], *, timeout: float = 30.0) -> int:
        """Remove queued messages; returns how many were queued and are gone."""
        keys = [message_id for message_id in message_ids if _id_key(message_id) is not None]
        if not keys:
            return 0
        removed: int = await self._submit(DeleteOp(keys), timeout)
        return removed

    async def purge_completed(self, *, timeout: float = 30.0) -> int:
        """Drop completed records older than `completed_ttl`; returns how many.

        Works in transactions of `PURGE_BATCH` records so other writers interleave.
        """
        cutoff = self._clock() - self._completed_ttl
        total = 0
        while True:
            purged: int = await self._submit(PurgeCompletedOp(cutoff, PURGE_BATCH), timeout)
            total += purged
            if purged < PURGE_BATCH:
                return total

    async def _submit(self, op: WriteOp, timeout: float) -> Any:
        """Hand `op` to the writer and wait for its commit, under a deadline."""
        remaining = timeout
        try:
            self._slots.acquire_nowait()
        except trio.WouldBlock:  # the commit queue is full: wait for a slot
            started = time.monotonic()
            with trio.move_on_after(timeout) as scope:
                await self._slots.acquire()
            if scope.cancelled_caught:
                raise SpoolTimeoutError(f"no room in the commit queue within {timeout} s") from None
            remaining = max(timeout - (time.monotonic() - started), 0.0)
        if self._closed or self._writer.crashed:
            self._slots.release()
            raise SpoolIOError("the spool is closed" if self._closed else "the spool writer died")
        op.slot = True
        op.task = trio.lowlevel.current_task()
        self._deadlines.add(op, remaining)
        self._writer.submit(op)
        await trio.lowlevel.wait_task_rescheduled(partial(self._abort, op))
        if op.timed_out:
            raise SpoolTimeoutError(f"the spool write did not commit within {timeout} s")
        if op.error is not None:
            raise op.error
        return op.result

    def _give_up(self, ops: list[WriteOp]) -> None:
        """Waiters stop waiting: each op is skipped unless the writer already has it."""
        with self._writer.claim_lock:
            for op in ops:
                if not op.claimed:
                    op.abandoned = True

    def _abort(self, op: WriteOp, _raise_cancel: object) -> trio.lowlevel.Abort:
        """The waiting task is cancelled."""
        self._deadlines.discard(op)
        self._give_up([op])
        op.task = None
        return trio.lowlevel.Abort.SUCCEEDED

    def _on_expired(self, ops: list[WriteOp]) -> None:
        """In the trio thread: deadlines passed; wake those waiters with a timeout."""
        self._give_up(ops)
        for op in ops:
            task = op.task
            if task is not None:
                op.task = None
                op.timed_out = True
                trio.lowlevel.reschedule(task)

    def _on_done(self, ops: list[WriteOp]) -> None:
        """In the trio thread, once per batch: free the slots, wake the waiters."""
        release = self._slots.release
        reschedule = trio.lowlevel.reschedule
        discard = self._deadlines.discard
        for op in ops:
            if op.slot:
                op.slot = False
                release()
            task = op.task
            if task is not None:
                op.task = None
                discard(op)
                reschedule(task)

    # --- reading -------------------------------------------------------------------------

    def get(self, message_id: str) -> MessageMeta | None:
        """The metadata of a queued or completed message; None if there is none.

        A record that cannot be decoded is quarantined (and logged), and None
        returned.
        """
        mid = _id_key(message_id)
        if mid is None:
            return None
        senv = self._senv
        with senv.env.begin(buffers=True) as txn:
            raw = txn.get(mid, db=senv.meta)
            if raw is not None:
                try:
                    return records.decode_meta(message_id, raw)
                except RecordError as exc:
                    self._report_undecodable(META, mid, bytes(raw), exc)
                    return None
            raw = txn.get(mid, db=senv.completed)
            if raw is not None:
                try:
                    return records.decode_completed(message_id, raw)[0]
                except RecordError as exc:
                    self._report_undecodable(COMPLETED, mid, bytes(raw), exc)
        return None

    def read_content(self, message_id: str) -> bytes:
        """The content of a queued message.

        `UnknownMessageError` if it has none; `RecordError` if its content record is
        undecodable (the message is then quarantined).
        """
        mid = _id_key(message_id)
        if mid is None:
            raise UnknownMessageError(message_id)
        with self._senv.env.begin(buffers=True) as txn:
            raw = txn.get(mid, db=self._senv.content)
            if raw is None:
                raise UnknownMessageError(message_id)
            try:
                return records.decode_content(raw)
            except RecordError as exc:
                self._report_undecodable(CONTENT, mid, bytes(raw), exc)
                raise RecordError(f"message {message_id} quarantined: {exc}") from exc

    def iter_schedule(self) -> Iterator[ScheduleRecord]:
        """Every queued message's schedule record, by next attempt then id.

        Reads the schedule index only (no content, no full metadata), in one read
        transaction: a consistent snapshot.  Iterate it promptly -- an open read
        transaction keeps the pages of its snapshot from being reused.
        """
        senv = self._senv
        with senv.env.begin() as txn:  # small values: copies beat memoryviews here
            decode = records.decode_schedule
            for key, raw in txn.cursor(db=senv.schedule):
                try:
                    record = decode(key, raw)
                except RecordError as exc:
                    rebuilt = self._schedule_from_meta(txn, key, raw, exc)
                    if rebuilt is None:
                        continue
                    record = rebuilt
                yield record

    def _schedule_from_meta(
        self, txn: lmdb.Transaction, key: bytes, raw: bytes, exc: RecordError
    ) -> ScheduleRecord | None:
        """A bad schedule entry: report it, and rebuild the record from meta if it can."""
        self._report_undecodable(SCHEDULE, key, raw, exc)
        mid = key[8:]
        meta_raw = txn.get(mid, db=self._senv.meta) if mid else None
        if meta_raw is None:
            return None
        try:
            return records.schedule_record_of(records.decode_meta(str(key[8:], "ascii"), meta_raw))
        except (RecordError, UnicodeDecodeError):
            return None

    def iter_queued(self) -> Iterator[MessageMeta]:
        """The full metadata of every queued message, in id (creation) order."""
        senv = self._senv
        with senv.env.begin(buffers=True) as txn:
            for key, raw in txn.cursor(db=senv.meta):
                try:
                    meta = records.decode_meta(str(key, "ascii"), raw)
                except (RecordError, UnicodeDecodeError) as exc:
                    error = exc if isinstance(exc, RecordError) else RecordError(str(exc))
                    self._report_undecodable(META, bytes(key), bytes(raw), error)
                    continue
                yield meta

    def count_queued(self) -> int:
        """How many messages are queued."""
        with self._senv.env.begin() as txn:
            return txn.stat(self._senv.meta)["entries"]

    def iter_quarantine(self) -> Iterator[QuarantinedRecord]:
        """Every quarantined record (for the admin tools)."""
        with self._senv.env.begin() as txn:
            for key, raw in txn.cursor(db=self._senv.quarantine):
                try:
                    db, source_key, value, reason, at = records.decode_quarantine(raw)
                except RecordError as exc:
                    db, source_key, value, reason, at = QUARANTINE, key, raw, str(exc), 0.0
                yield QuarantinedRecord(db, source_key, value, reason, at)

    def aux(self, name: str) -> AuxTable:
        """The aux table `name` (KeyError unless it was declared when opening)."""
        try:
            return self._aux[name]
        except KeyError:
            raise KeyError(f"no aux table {name!r}; declared: {sorted(self._aux)}") from None

    def statistics(self) -> SpoolStatistics:
        """Counters of the writer and the sizes of the queue, completed and quarantine."""
        senv = self._senv
        with senv.env.begin() as txn:
            queued = txn.stat(senv.meta)["entries"]
            completed = txn.stat(senv.completed)["entries"]
            quarantined = txn.stat(senv.quarantine)["entries"]
        writer = self._writer
        return SpoolStatistics(
            stored=writer.stored,
            commits=writer.commits,
            batches=writer.batches,
            ops=writer.ops,
            largest_batch=writer.largest_batch,
            failed_commits=writer.failed_commits,
            in_flight=self._commit_queue - self._slots.value,
            queued=queued,
            completed=completed,
            quarantined=quarantined,
            sync=self._sync,
        )

    def _report_undecodable(self, db_name: str, key: bytes, raw: bytes, exc: RecordError) -> None:
        """Log an undecodable record once and have the writer quarantine it."""
        if (db_name, key) in self._reported:
            return
        self._reported.add((db_name, key))
        _log.warning(
            "spool.record_undecodable",
            db=db_name,
            key=key.decode("ascii", "backslashreplace"),
            reason=str(exc),
        )
        if not self._closed:
            self._writer.submit(QuarantineOp(db_name, key, raw, str(exc), self._clock()))

    # --- life cycle ----------------------------------------------------------------------

    def _start(self) -> None:
        self._writer.start()
        self._deadlines.start()

    async def _aclose(self) -> None:
        """Let the writer finish what is queued, then close the environment."""
        if self._closed:
            return
        self._closed = True
        self._writer.stop()
        self._deadlines.stop()
        # Waited for in a worker thread: real time (a MockClock cannot cut it short),
        # and not cancellable -- the environment must outlive its writer.
        if await trio.to_thread.run_sync(self._writer.join, CLOSE_TIMEOUT):
            self._senv.close()
        else:
            _log.error("spool.writer_stuck", path=str(self.path), waited=CLOSE_TIMEOUT)


def _checked_id(message_id: str) -> str:
    if _id_key(message_id) is None:
        raise UnknownMessageError(message_id)
    return message_id


@asynccontextmanager
async def open_spool(
    path: str | os.PathLike[str],
    *,
    map_size: int = 64 << 30,
    max_age: float = 5 * 86400,
    completed_ttl: float = 7 * 86400,
    commit_queue: int = 10_000,
    sync: bool = True,
    clock: Callable[[], float] = time.time,
    aux_tables: Sequence[str] = DEFAULT_AUX_TABLES,
    max_batch: int = 4096,
    max_batch_bytes: int = 64 << 20,
    reserve: int | None = None,
) -> AsyncIterator[Spool]:
    """Open (create) the spool of one shard directory and run its writer.

    `commit_queue` bounds the writes waiting for the writer; `max_batch` and
    `max_batch_bytes` bound one group commit (``max_batch=1`` disables group
    commit); `reserve` is the free space in bytes kept for writes that free space
    (default: 1/32 of the map, at most 256 MiB); `aux_tables` declares the aux
    tables.  `clock` gives the times written into records (created, expiry,
    completion); write deadlines run on real time, not trio's clock -- except the
    wait for room in a full commit queue.  Must be used inside a trio run.
    """
    token = trio.lowlevel.current_trio_token()
    opener = partial(
        open_environment,
        path,
        map_size=map_size,
        sync=sync,
        aux_tables=tuple(aux_tables),
        reserve=reserve,
    )
    senv = await trio.to_thread.run_sync(opener)
    try:
        spool = Spool(
            senv,
            token=token,
            max_age=max_age,
            completed_ttl=completed_ttl,
            commit_queue=commit_queue,
            sync=sync,
            clock=clock,
            max_batch=max_batch,
            max_batch_bytes=max_batch_bytes,
        )
    except BaseException:
        senv.close()
        raise
    spool._start()
    try:
        yield spool
    finally:
        await spool._aclose()
