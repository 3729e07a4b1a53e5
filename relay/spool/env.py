"""The LMDB environment of one spool shard: its named databases and its free space.

Durability: the environment is opened with ``sync=True, metasync=True`` and
without ``writemap``/``map_async``, so ``mdb_txn_commit`` writes the dirty pages,
``fdatasync``s the data file and then writes the meta page through a second
descriptor opened with ``O_DSYNC``.  A commit that returned is on disk; nothing
else (no ``env.sync()``) is needed.  ``sync=False`` exists for tests and
benchmarks that measure something else.

Readahead is off: recovery walks the schedule index, whose pages lie scattered
between content pages, and readahead would read (and map) the content around
each of them too -- measured on 100,000 queued 5 KB messages: cold recovery
1.55 s instead of 0.48 s, and 199 MB of the file mapped instead of 25 MB.

Locking is LMDB's default (``lock=True``), so a second process -- the
``relay queue`` command -- may open the same directory and read or write while
relay runs.  LMDB forbids opening one environment twice in the same process.

Free space: LMDB answers ``MDB_MAP_FULL`` when the map has no free page left, and
then even a delete can fail (copy-on-write needs fresh pages).  The spool keeps a
reserve: new data (stores, aux puts) is refused with `SpoolFullError` once the
live pages would reach ``map pages - reserve``, which leaves the reserve to the
operations that free space (delivery results, deletes, purges).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import lmdb

from relay.errors import SpoolError, SpoolFullError, SpoolIOError

#: Core databases, by name.
META = "meta"
CONTENT = "content"
SCHEDULE = "schedule"
COMPLETED = "completed"
COMPLETED_INDEX = "completed_index"
QUARANTINE = "quarantine"
CORE_DATABASES = (META, CONTENT, SCHEDULE, COMPLETED, COMPLETED_INDEX, QUARANTINE)

#: Auxiliary key/value tables every spool declares.
DEFAULT_AUX_TABLES = ("users", "apikeys", "idempotency", "suspensions", "webhooks", "control")
#: Named-database slots kept free for tables a later version declares.
SPARE_DATABASES = 8
AUX_PREFIX = "aux."

_MIN_RESERVE_PAGES = 64
_MAX_RESERVE_BYTES = 256 << 20


def default_reserve(map_size: int) -> int:
    """Bytes kept free for space-freeing writes: 1/32 of the map, within bounds."""
    return min(map_size // 32, _MAX_RESERVE_BYTES)


@dataclass(frozen=True, slots=True)
class SpoolEnv:
    """An open environment and the handles of its named databases."""

    env: lmdb.Environment
    path: Path
    dbs: Mapping[str, lmdb._Database]  # every named database, by name
    aux: Mapping[str, lmdb._Database]  # aux tables, by their declared name
    page_size: int
    reserve_pages: int

    @property
    def meta(self) -> lmdb._Database:
        return self.dbs[META]

    @property
    def content(self) -> lmdb._Database:
        return self.dbs[CONTENT]

    @property
    def schedule(self) -> lmdb._Database:
        return self.dbs[SCHEDULE]

    @property
    def completed(self) -> lmdb._Database:
        return self.dbs[COMPLETED]

    @property
    def completed_index(self) -> lmdb._Database:
        return self.dbs[COMPLETED_INDEX]

    @property
    def quarantine(self) -> lmdb._Database:
        return self.dbs[QUARANTINE]

    def map_pages(self) -> int:
        """Pages in the memory map (the most the data file may hold)."""
        return self.env.info()["map_size"] // self.page_size

    def live_pages(self, txn: lmdb.Transaction) -> int:
        """Pages holding data as of `txn` (free-list pages not counted)."""
        total = 2  # the two meta pages
        for stat in (txn.stat(), *(txn.stat(db) for db in self.dbs.values())):
            total += stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
        return total

    def close(self) -> None:
        self.env.close()


def open_environment(
    path: str | os.PathLike[str],
    *,
    map_size: int,
    sync: bool,
    aux_tables: Sequence[str] = DEFAULT_AUX_TABLES,
    reserve: int | None = None,
) -> SpoolEnv:
    """Open (create) the environment at `path` and every named database."""
    for name in aux_tables:
        if not name or "\0" in name or not name.isascii():
            raise ValueError(f"invalid aux table name {name!r}")
    if len(set(aux_tables)) != len(aux_tables):
        raise ValueError("aux table names must be distinct")
    directory = Path(path)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        env = lmdb.Environment(
            str(directory),
            map_size=map_size,
            subdir=True,
            metasync=sync,
            sync=sync,
            map_async=False,
            writemap=False,
            mode=0o600,
            max_dbs=len(CORE_DATABASES) + len(aux_tables) + SPARE_DATABASES,
            max_spare_txns=4,
            readahead=False,
            lock=True,
        )
    except lmdb.Error as exc:
        raise translate_error(exc) from exc
    try:
        # Reader slots left by a process that died (a killed `relay queue`) would
        # pin old pages forever and make the file grow: clear them.
        env.reader_check()
        dbs: dict[str, lmdb._Database] = {}
        aux: dict[str, lmdb._Database] = {}
        with env.begin(write=True) as txn:
            for name in CORE_DATABASES:
                dbs[name] = env.open_db(name.encode("ascii"), txn=txn)
            for name in aux_tables:
                full = AUX_PREFIX + name
                dbs[full] = aux[name] = env.open_db(full.encode("ascii"), txn=txn)
        page_size = env.stat()["psize"]
        if reserve is None:
            reserve_pages = max(-(-default_reserve(map_size) // page_size), _MIN_RESERVE_PAGES)
        else:
            reserve_pages = -(-reserve // page_size)
    except BaseException as exc:
        env.close()
        if isinstance(exc, lmdb.Error):
            raise translate_error(exc) from exc
        raise
    return SpoolEnv(env, directory, dbs, aux, page_size, reserve_pages)


def translate_error(exc: lmdb.Error) -> SpoolError:
    """The typed spool error for an LMDB error."""
    if isinstance(exc, lmdb.MapFullError):
        return SpoolFullError(f"spool map is full: {exc}")
    return SpoolIOError(f"spool I/O error: {exc}")
