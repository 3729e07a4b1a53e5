"""Message status: look a message up in every shard's spool and describe it.

A message lives in the spool of the shard that accepted it, and the API request
asking for it may reach any shard (they share the port).  `MessageFinder` looks
in its own shard first (the running `Spool`), then in the other shard
environments under the spool directory, opened read-only on first use and kept
open: LMDB lets any number of processes read while one writes, and a read
transaction never waits.  Within one process an environment may be opened only
once, so the spools of shards running in this process (tests run several) are
registered with `register_local` and used directly.  A message that the other
shard has not yet committed is not found (404): the 202 for it has not been
given either.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import lmdb

from relay.api.fields import rfc3339
from relay.errors import RecordError
from relay.log import get_logger
from relay.model import MessageMeta
from relay.spool import records

_log = get_logger("api.status")

_SHARD_DIR = re.compile(r"shard-(\d+)")
_ID = re.compile(r"[0-9A-Z]{26}")


class MetaSource(Protocol):
    """What the finder needs of a spool."""

    def get(self, message_id: str) -> MessageMeta | None: ...


_LOCAL: dict[Path, MetaSource] = {}


def register_local(path: Path, spool: MetaSource) -> Callable[[], None]:
    """Make a spool open in this process known to finders; returns the undo."""
    resolved = path.resolve()
    _LOCAL[resolved] = spool

    def unregister() -> None:
        if _LOCAL.get(resolved) is spool:
            del _LOCAL[resolved]

    return unregister


class _ReadOnlyShard:
    """Another process's shard environment, read-only."""

    def __init__(self, path: Path) -> None:
        self.env = lmdb.open(
            str(path), readonly=True, lock=True, max_dbs=64, readahead=False, subdir=True
        )
        try:
            self.meta = self.env.open_db(b"meta", create=False)
            self.completed = self.env.open_db(b"completed", create=False)
        except BaseException:
            self.env.close()
            raise

    def get(self, message_id: str) -> MessageMeta | None:
        key = message_id.encode("ascii")
        with self.env.begin(buffers=True) as txn:
            raw = txn.get(key, db=self.meta)
            if raw is not None:
                return records.decode_meta(message_id, raw)
            raw = txn.get(key, db=self.completed)
            if raw is not None:
                return records.decode_completed(message_id, raw)[0]
        return None


class MessageFinder:
    """Finds a message in any shard of the spool directory."""

    def __init__(self, own: MetaSource, own_path: Path, spool_root: Path) -> None:
        self._own = own
        self._own_path = own_path.resolve()
        self._root = spool_root
        self._others: dict[Path, _ReadOnlyShard] = {}

    def find(self, message_id: str) -> tuple[int | None, MessageMeta] | None:
        """(shard number, metadata) of the message, or None."""
        if not _ID.fullmatch(message_id):
            return None
        meta = self._own.get(message_id)
        if meta is not None:
            return _shard_number(self._own_path), meta
        for path in self._shard_paths():
            source = _LOCAL.get(path) or self._open(path)
            if source is None:
                continue
            try:
                meta = source.get(message_id)
            except (RecordError, lmdb.Error) as exc:
                _log.warning("status.read_failed", shard=str(path), error=repr(exc))
                continue
            if meta is not None:
                return _shard_number(path), meta
        return None

    def _shard_paths(self) -> list[Path]:
        try:
            entries = sorted(self._root.iterdir())
        except OSError:
            return []
        return [
            p.resolve()
            for p in entries
            if _SHARD_DIR.fullmatch(p.name) and p.resolve() != self._own_path
        ]

    def _open(self, path: Path) -> _ReadOnlyShard | None:
        shard = self._others.get(path)
        if shard is None:
            try:
                shard = self._others[path] = _ReadOnlyShard(path)
            except lmdb.Error as exc:  # not created yet, or not a spool
                _log.debug("status.shard_unavailable", shard=str(path), error=repr(exc))
                return None
        return shard

    def close(self) -> None:
        for shard in self._others.values():
            shard.env.close()
        self._others.clear()


def _shard_number(path: Path) -> int | None:
    m = _SHARD_DIR.fullmatch(path.name)
    return int(m.group(1)) if m else None


def describe(meta: MessageMeta, shard: int | None) -> dict[str, Any]:
    """The GET /v1/messages/{id} body."""
    final = meta.is_final
    return {
        "id": meta.id,
        "shard": shard,
        "state": "completed" if final else "queued",
        "sender": meta.sender,
        "tenant": meta.tenant,
        "campaign": meta.campaign,
        "tags": list(meta.tags),
        "metadata": dict(meta.metadata),
        "size": meta.size,
        "created": rfc3339(meta.created),
        "expires": rfc3339(meta.expires),
        "send_at": rfc3339(meta.send_at),
        "next_attempt": None if final else rfc3339(meta.next_attempt),
        "attempts": meta.attempts,
        "recipients": [
            {
                "address": r.address,
                "status": r.status.name.lower(),
                "reply": r.reply,
                "attempts": r.attempts,
            }
            for r in meta.recipients
        ],
        "history": [
            {
                "at": rfc3339(a.at),
                "mx": a.mx,
                "recipients": list(a.recipients),
                "reply": a.reply,
                "duration": round(a.duration, 6),
            }
            for a in meta.history
        ],
    }
