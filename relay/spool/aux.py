"""Aux tables: small durable key/value tables living in the spool's environment.

Users, API keys, idempotency keys, suspensions, the webhook queue: things that
must survive a restart, be visible to the `relay queue` command, and sometimes
change together with messages.  Each is a named LMDB database declared when the
spool opens; writes go through the spool's writer like every other write.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import lmdb

from relay.errors import RecordError
from relay.spool import records
from relay.spool.env import AUX_PREFIX, SpoolEnv
from relay.spool.operations import AuxDeleteOp, AuxPutOp, WriteOp

#: Longest aux key (LMDB keys are at most 511 bytes; the quarantine key adds a prefix).
MAX_KEY_LENGTH = 255

Submit = Callable[[WriteOp, float], Awaitable[Any]]
Report = Callable[[str, bytes, bytes, RecordError], None]


class AuxTable:
    """One aux table.  Values are anything msgpack encodes (arrays come back as tuples)."""

    def __init__(self, name: str, senv: SpoolEnv, submit: Submit, report: Report) -> None:
        self.name = name
        self._db_name = AUX_PREFIX + name
        self._db = senv.aux[name]
        self._env: lmdb.Environment = senv.env
        self._page_size = senv.page_size
        self._submit = submit
        self._report = report

    @staticmethod
    def _check_key(key: bytes) -> None:
        if not isinstance(key, bytes) or not 0 < len(key) <= MAX_KEY_LENGTH:
            raise ValueError(f"aux keys are 1 to {MAX_KEY_LENGTH} bytes")

    def get(self, key: bytes) -> Any | None:
        """The value at `key`, or None (also for an undecodable one, then quarantined)."""
        self._check_key(key)
        with self._env.begin(buffers=True) as txn:
            raw = txn.get(key, db=self._db)
            if raw is None:
                return None
            try:
                return records.decode_aux(raw)
            except RecordError as exc:
                self._report(self._db_name, key, bytes(raw), exc)
                return None

    def items(self, prefix: bytes = b"") -> Iterator[tuple[bytes, Any]]:
        """Every (key, value) whose key starts with `prefix`, in key order."""
        with self._env.begin() as txn:
            cursor = txn.cursor(db=self._db)
            if not (cursor.set_range(prefix) if prefix else cursor.first()):
                return
            for key, raw in cursor:
                if not key.startswith(prefix):
                    return
                try:
                    value = records.decode_aux(raw)
                except RecordError as exc:
                    self._report(self._db_name, key, raw, exc)
                    continue
                yield key, value

    async def put(self, key: bytes, value: Any, *, timeout: float = 30.0) -> None:
        """Durably set `key` to `value` (TypeError if msgpack cannot encode it)."""
        self._check_key(key)
        raw = records.encode_aux(value)
        await self._submit(AuxPutOp(self._db_name, key, raw, self._page_size), timeout)

    async def delete(self, key: bytes, *, timeout: float = 30.0) -> bool:
        """Durably remove `key`; whether it was there."""
        self._check_key(key)
        deleted: bool = await self._submit(AuxDeleteOp(self._db_name, key), timeout)
        return deleted
