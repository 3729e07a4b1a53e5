"""The write operations the writer thread applies, one batch transaction at a time.

Each operation is built in the trio thread with everything that can be computed
there already done (records encoded, sizes estimated), so the writer thread --
which holds the GIL while it applies them -- only reads what the transaction must
read and issues puts and deletes.

Contract of `WriteOp.apply`: it either raises a `SpoolError` *before* its first
write (the batch goes on without it), or makes all of its writes.  An operation
that had to write and still report a failure (it quarantined a record it could
not decode) sets ``self.error`` itself and returns.  Any ``lmdb.Error`` escapes
and fails the whole transaction; the writer then decides what to retry.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import lmdb
import trio

from relay.errors import DuplicateMessageError, RecordError, UnknownMessageError
from relay.log import get_logger
from relay.model import Attempt, MessageMeta, RcptStatus, Recipient, RecipientResult
from relay.spool import records
from relay.spool.env import CONTENT, META, SCHEDULE, SpoolEnv

#: Attempts kept in a message's history (the oldest are dropped beyond this).
MAX_HISTORY = 100

_log = get_logger("spool")

_PAGE_HEADER = 16
_NODE_HEADER = 8


def entry_pages(size: int, page_size: int) -> float:
    """Pages a new entry of `size` bytes (key + value) will take, estimated from above.

    A value too big for a node goes to overflow pages of its own; small entries
    share leaf pages, counted as half full.
    """
    if size + _NODE_HEADER > (((page_size - _PAGE_HEADER) // 2) & ~1) - 2:
        return float(-(-(size + _PAGE_HEADER) // page_size))
    return 2.0 * (size + _NODE_HEADER + 2) / page_size


class WriteOp(abc.ABC):
    """One unit of work for the writer thread.

    The trio side fills `task`, `slot` and `deadline_bucket`; the writer sets
    `claimed` (under its claim lock), then `result` or `error`; `abandoned` marks
    an operation whose waiter gave up before the writer claimed it: it is
    skipped, never applied.
    """

    __slots__ = (
        "abandoned",
        "claimed",
        "deadline_bucket",
        "error",
        "grows",
        "nbytes",
        "result",
        "slot",
        "task",
        "timed_out",
    )

    def __init__(self, *, grows: float = 0.0, nbytes: int = 0) -> None:
        self.abandoned = False
        self.claimed = False
        self.error: BaseException | None = None
        self.result: Any = None
        self.grows = grows  # estimated new pages; > 0 only for ops that add data
        self.nbytes = nbytes  # bytes it writes, to bound a batch
        self.slot = False  # holds a slot of the commit queue
        self.task: trio.lowlevel.Task | None = None  # the waiting task, if any
        self.deadline_bucket: dict[WriteOp, float] | None = None  # see deadlines.py
        self.timed_out = False  # its waiter's deadline passed first

    @abc.abstractmethod
    def apply(self, txn: lmdb.Transaction, senv: SpoolEnv) -> Any:
        """Apply the operation inside the write transaction; returns its result."""

    def stored(self) -> int:
        """Messages this operation stored (for statistics)."""
        return 0

    def after_commit(self) -> None:  # noqa: B027 -- an optional hook, empty by default
        """Called by the writer once the transaction holding this op committed."""


# --- shared helpers ------------------------------------------------------------------


def _find_schedule_key(txn: lmdb.Transaction, senv: SpoolEnv, mid: bytes) -> bytes | None:
    """The schedule key of `mid` by scanning the index (only when meta is unreadable)."""
    cursor = txn.cursor(db=senv.schedule)
    for key in cursor.iternext(keys=True, values=False):
        if key[8:] == mid:
            return bytes(key)
    return None


def move_to_quarantine(
    txn: lmdb.Transaction, senv: SpoolEnv, db_name: str, key: bytes, reason: str, now: float
) -> bool:
    """Move one record into the quarantine (False when it is not there)."""
    raw = txn.pop(key, db=senv.dbs[db_name])
    if raw is None:
        return False
    txn.put(
        records.quarantine_key(db_name, key),
        records.encode_quarantine(db_name, key, bytes(raw), reason, now),
        db=senv.quarantine,
    )
    return True


def quarantine_message(
    txn: lmdb.Transaction,
    senv: SpoolEnv,
    mid: bytes,
    reason: str,
    now: float,
    *,
    schedule_key: bytes | None = None,
) -> list[str]:
    """Move a message's meta, content and schedule entry into the quarantine.

    Returns the names of the databases something was moved from.
    """
    if schedule_key is None:
        meta_raw = txn.get(mid, db=senv.meta)
        if meta_raw is not None:
            try:
                meta = records.decode_meta(mid.decode("ascii", "replace"), meta_raw)
                schedule_key = records.time_key(meta.next_attempt, mid)
            except RecordError:
                schedule_key = None
        if schedule_key is None:
            schedule_key = _find_schedule_key(txn, senv, mid)
    moved = []
    for db_name, key in ((META, mid), (CONTENT, mid), (SCHEDULE, schedule_key)):
        if key is not None and move_to_quarantine(txn, senv, db_name, key, reason, now):
            moved.append(db_name)
    return moved


def _log_quarantine(db_name: str, key: bytes, reason: str, action: str, moved: list[str]) -> None:
    _log.warning(
        "spool.record_quarantined",
        db=db_name,
        key=key.decode("ascii", "backslashreplace"),
        reason=reason,
        action=action,
        moved=moved,
    )


class _MessageUpdate(WriteOp):
    """Base of operations that rewrite one queued message's meta and schedule entry."""

    __slots__ = ("message_id", "mid", "now", "quarantined")

    def __init__(self, message_id: str, now: float) -> None:
        super().__init__()
        self.message_id = message_id
        self.mid = message_id.encode("ascii")
        self.now = now
        self.quarantined: tuple[str, list[str]] | None = None

    def _load(self, txn: lmdb.Transaction, senv: SpoolEnv) -> MessageMeta | None:
        """The queued meta; None (and the message quarantined) when undecodable."""
        self.quarantined = None
        raw = txn.get(self.mid, db=senv.meta)
        if raw is None:
            raise UnknownMessageError(self.message_id)
        try:
            return records.decode_meta(self.message_id, raw)
        except RecordError as exc:
            reason = str(exc)
            self.quarantined = (reason, quarantine_message(txn, senv, self.mid, reason, self.now))
            self.error = RecordError(f"message {self.message_id} quarantined: {reason}")
            return None

    def _rewrite(
        self, txn: lmdb.Transaction, senv: SpoolEnv, old: MessageMeta, new: MessageMeta
    ) -> None:
        """Write `new` over `old`: meta, then the schedule entry moved to its new key."""
        txn.put(self.mid, records.encode_meta(new), db=senv.meta)
        txn.delete(records.schedule_key(old), db=senv.schedule)
        txn.put(records.schedule_key(new), records.encode_schedule(new), db=senv.schedule)

    def after_commit(self) -> None:
        if self.quarantined is not None:
            reason, moved = self.quarantined
            _log_quarantine(META, self.mid, reason, "quarantined", moved)


# --- operations ----------------------------------------------------------------------


class StoreOp(WriteOp):
    """Store new messages: meta, content and schedule entry of each, all or none."""

    __slots__ = ("entries", "metas")

    def __init__(
        self,
        metas: list[MessageMeta],
        entries: list[tuple[bytes, bytes, bytes, bytes, bytes]],
        page_size: int,
    ) -> None:
        grows = 0.0
        nbytes = 0
        for mid, meta, content, skey, svalue in entries:
            sizes = (len(mid) + len(meta), len(mid) + len(content), len(skey) + len(svalue))
            nbytes += sizes[0] + sizes[1] + sizes[2]
            for size in sizes:
                grows += entry_pages(size, page_size)
        super().__init__(grows=grows, nbytes=nbytes)
        self.metas = metas
        self.entries = entries  # (id, meta record, content record, schedule key, value)

    def apply(self, txn: lmdb.Transaction, senv: SpoolEnv) -> list[MessageMeta]:
        meta_db = senv.meta
        inserted: list[bytes] = []
        for mid, meta, _content, _skey, _svalue in self.entries:
            if not txn.put(mid, meta, overwrite=False, db=meta_db):
                for key in inserted:
                    txn.delete(key, db=meta_db)
                raise DuplicateMessageError(f"message {mid.decode()} is already spooled")
            inserted.append(mid)
        content_db = senv.content
        schedule_db = senv.schedule
        for mid, _meta, content, skey, svalue in self.entries:
            txn.put(mid, content, db=content_db)
            txn.put(skey, svalue, db=schedule_db)
        return self.metas

    def stored(self) -> int:
        return len(self.entries) if self.error is None else 0


class RecordResultsOp(_MessageUpdate):
    """Apply delivery results; move the message to completed when all are final."""

    __slots__ = ("attempt", "next_attempt", "results")

    def __init__(
        self,
        message_id: str,
        results: Sequence[RecipientResult],
        next_attempt: float | None,
        attempt: Attempt | None,
        now: float,
    ) -> None:
        super().__init__(message_id, now)
        self.results = {result.address: result for result in results}
        self.next_attempt = next_attempt
        self.attempt = attempt

    def apply(self, txn: lmdb.Transaction, senv: SpoolEnv) -> MessageMeta | None:
        meta = self._load(txn, senv)
        if meta is None:
            return None
        recipients = []
        for rcpt in meta.recipients:
            result = self.results.get(rcpt.address)
            if result is None or rcpt.status.is_final:
                recipients.append(rcpt)
            else:
                status = RcptStatus(result.status)
                recipients.append(Recipient(rcpt.address, status, result.reply, rcpt.attempts + 1))
        history = meta.history
        if self.attempt is not None:
            history = (*history, self.attempt)[-MAX_HISTORY:]
        new = replace(
            meta,
            recipients=tuple(recipients),
            attempts=meta.attempts + 1,
            history=history,
            next_attempt=meta.next_attempt if self.next_attempt is None else self.next_attempt,
        )
        if not new.is_final:
            self._rewrite(txn, senv, meta, new)
            return new
        txn.delete(self.mid, db=senv.meta)
        txn.delete(self.mid, db=senv.content)
        txn.delete(records.schedule_key(meta), db=senv.schedule)
        txn.put(self.mid, records.encode_completed(new, self.now), db=senv.completed)
        txn.put(records.time_key(self.now, self.mid), b"", db=senv.completed_index)
        return new


class RescheduleOp(_MessageUpdate):
    """Move a queued message's next attempt."""

    __slots__ = ("next_attempt",)

    def __init__(self, message_id: str, next_attempt: float, now: float) -> None:
        super().__init__(message_id, now)
        self.next_attempt = next_attempt

    def apply(self, txn: lmdb.Transaction, senv: SpoolEnv) -> MessageMeta | None:
        meta = self._load(txn, senv)
        if meta is None:
            return None
        new = replace(meta, next_attempt=self.next_attempt)
        self._rewrite(txn, senv, meta, new)
        return new


class DeleteOp(WriteOp):
    """Remove queued messages (meta, content, schedule entry); returns how many."""

    __slots__ = ("mids",)

    def __init__(self, message_ids: Sequence[str]) -> None:
        super().__init__()
        self.mids = [message_id.encode("ascii") for message_id in message_ids]

    def apply(self, txn: lmdb.Transaction, senv: SpoolEnv) -> int:
        removed = 0
        for mid in self.mids:
            raw = txn.pop(mid, db=senv.meta)
            if raw is None:
                continue
            try:
                meta = records.decode_meta(mid.decode("ascii", "replace"), raw)
                skey: bytes | None = records.time_key(meta.next_attempt, mid)
            except RecordError:
                skey = _find_schedule_key(txn, senv, mid)
            if skey is not None:
                txn.delete(skey, db=senv.schedule)
            txn.delete(mid, db=senv.content)
            removed += 1
        return removed


class PurgeCompletedOp(WriteOp):
    """Drop up to `limit` completed records that completed at or before `cutoff`."""

    __slots__ = ("cutoff", "limit")

    def __init__(self, cutoff: float, limit: int) -> None:
        super().__init__()
        self.cutoff = cutoff
        self.limit = limit

    def apply(self, txn: lmdb.Transaction, senv: SpoolEnv) -> int:
        cursor = txn.cursor(db=senv.completed_index)
        purged = 0
        if not cursor.first():
            return 0
        while purged < self.limit:
            key = cursor.key()
            if not key or records.split_time_key(key)[0] > self.cutoff:
                break
            txn.delete(key[8:], db=senv.completed)
            cursor.delete()
            purged += 1
        return purged


class AuxPutOp(WriteOp):
    """Put one aux-table value."""

    __slots__ = ("db_name", "key", "value")

    def __init__(self, db_name: str, key: bytes, value: bytes, page_size: int) -> None:
        size = len(key) + len(value)
        super().__init__(grows=entry_pages(size, page_size), nbytes=size)
        self.db_name = db_name
        self.key = key
        self.value = value

    def apply(self, txn: lmdb.Transaction, senv: SpoolEnv) -> None:
        txn.put(self.key, self.value, db=senv.dbs[self.db_name])


class AuxDeleteOp(WriteOp):
    """Delete one aux-table key; returns whether it was there."""

    __slots__ = ("db_name", "key")

    def __init__(self, db_name: str, key: bytes) -> None:
        super().__init__()
        self.db_name = db_name
        self.key = key

    def apply(self, txn: lmdb.Transaction, senv: SpoolEnv) -> bool:
        return txn.delete(self.key, db=senv.dbs[self.db_name])


class QuarantineOp(WriteOp):
    """File an undecodable record (found by a reader) in the quarantine.

    Readers cannot write, so they hand the raw bytes they saw to the writer.  The
    writer acts only if the record is still exactly those bytes.  An undecodable
    schedule entry whose message metadata is fine is rebuilt from it ("repaired";
    the bad bytes are still filed); an undecodable meta or content record takes its
    whole message into the quarantine; anything else is moved alone.
    """

    __slots__ = ("action", "db_name", "key", "moved", "now", "raw", "reason")

    def __init__(self, db_name: str, key: bytes, raw: bytes, reason: str, now: float) -> None:
        super().__init__()
        self.db_name = db_name
        self.key = key
        self.raw = raw
        self.reason = reason
        self.now = now
        self.action = ""
        self.moved: list[str] = []

    def apply(self, txn: lmdb.Transaction, senv: SpoolEnv) -> str:
        if txn.get(self.key, db=senv.dbs[self.db_name]) != self.raw:
            self.action = ""  # rewritten or removed since it was read: nothing to do
            return self.action
        if self.db_name == SCHEDULE:
            mid = self.key[8:]
            meta_raw = txn.get(mid, db=senv.meta) if mid else None
            meta = None
            if meta_raw is not None:
                try:
                    meta = records.decode_meta(mid.decode("ascii", "replace"), meta_raw)
                except RecordError:
                    meta = None
            if meta is not None:
                move_to_quarantine(txn, senv, SCHEDULE, self.key, self.reason, self.now)
                skey = records.time_key(meta.next_attempt, mid)
                txn.put(skey, records.encode_schedule(meta), db=senv.schedule)
                self.action, self.moved = "repaired", [SCHEDULE]
            elif not mid:  # no id in the key: file the entry alone
                self.action = "quarantined"
                move_to_quarantine(txn, senv, SCHEDULE, self.key, self.reason, self.now)
                self.moved = [SCHEDULE]
            else:
                self.action = "quarantined"
                self.moved = quarantine_message(
                    txn, senv, mid, self.reason, self.now, schedule_key=self.key
                )
        elif self.db_name in (META, CONTENT):
            self.action = "quarantined"
            self.moved = quarantine_message(txn, senv, self.key, self.reason, self.now)
        else:
            self.action = "quarantined"
            move_to_quarantine(txn, senv, self.db_name, self.key, self.reason, self.now)
            self.moved = [self.db_name]
        return self.action

    def after_commit(self) -> None:
        if self.action:
            _log_quarantine(self.db_name, self.key, self.reason, self.action, self.moved)
