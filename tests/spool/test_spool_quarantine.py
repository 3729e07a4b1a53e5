"""Undecodable records: quarantined with a log line, never dropped, never fatal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lmdb
import msgpack
import pytest
from spool_helpers import new_message
from structlog.testing import capture_logs

from relay.errors import RecordError
from relay.model import MessageMeta, RcptStatus, RecipientResult
from relay.spool import Spool, open_spool
from relay.spool import records as rec

RCPTS = ("a@one.example", "b@two.example")

GARBAGE = [
    pytest.param(b"", id="empty"),
    pytest.param(b"\xc1\xc1\xc1", id="invalid-msgpack"),
    pytest.param(msgpack.packb([rec.RecordType.SCHEDULE, 1, 1.0])[:-1], id="truncated"),
    pytest.param(msgpack.packb({"a": 1}), id="a-map"),
    pytest.param(msgpack.packb([rec.RecordType.META, 1, "x"]), id="wrong-type-tag"),
    pytest.param(
        msgpack.packb([rec.RecordType.SCHEDULE, 99, 1.0, "", "", []]), id="unknown-version"
    ),
    pytest.param(msgpack.packb([rec.RecordType.SCHEDULE, 1, "x", 1, 2, 3]), id="wrong-field-types"),
    pytest.param(
        msgpack.packb([rec.RecordType.SCHEDULE, 1, 1.0, "", "", []]) + b"\x00", id="extra-data"
    ),
]


def raw_put(path: Path, db: str, key: bytes, value: bytes) -> None:
    """Write a value behind the spool's back (it must be closed)."""
    with lmdb.Environment(str(path), map_size=64 << 30, max_dbs=64) as env:
        handle = env.open_db(db.encode())
        with env.begin(write=True) as txn:
            txn.put(key, value, db=handle)


def raw_keys(path: Path, db: str) -> list[bytes]:
    with lmdb.Environment(str(path), map_size=64 << 30, max_dbs=64) as env:
        handle = env.open_db(db.encode())
        with env.begin() as txn:
            return [bytes(key) for key, _ in txn.cursor(db=handle)]


async def flush(spool: Spool) -> None:
    """Wait until everything queued before now has been committed (the writer is FIFO)."""
    await spool.aux("control").put(b"flush", 1)


async def store_three(path: Path) -> list[MessageMeta]:
    async with open_spool(path) as spool:
        return [await spool.store(new_message(n, recipients=RCPTS)) for n in range(3)]


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


@pytest.mark.parametrize("garbage", GARBAGE)
async def test_bad_schedule_entry_is_rebuilt_from_meta_and_filed(
    spool_dir: Path, garbage: bytes
) -> None:
    metas = await store_three(spool_dir)
    victim = metas[1]
    raw_put(spool_dir, "schedule", rec.schedule_key(victim), garbage)
    with capture_logs() as logs:
        async with open_spool(spool_dir) as spool:
            recovered = list(spool.iter_schedule())
            assert recovered == [rec.schedule_record_of(m) for m in metas]
            await flush(spool)
            [filed] = spool.iter_quarantine()
            assert (filed.db, filed.key, filed.raw) == (
                "schedule",
                rec.schedule_key(victim),
                garbage,
            )
            assert filed.reason
            assert list(spool.iter_schedule()) == recovered  # repaired in place
            assert spool.statistics().quarantined == 1
    [detected] = events(logs, "spool.record_undecodable")
    assert detected["db"] == "schedule" and detected["log_level"] == "warning"
    [filed_log] = events(logs, "spool.record_quarantined")
    assert filed_log["action"] == "repaired"
    assert filed_log["reason"] == detected["reason"]


async def test_unknown_meta_version_quarantines_the_message(spool_dir: Path) -> None:
    metas = await store_three(spool_dir)
    victim = metas[0]
    newer = msgpack.packb([rec.RecordType.META, 99, "future", "fields"])
    raw_put(spool_dir, "meta", victim.id.encode(), newer)
    with capture_logs() as logs:
        async with open_spool(spool_dir) as spool:
            # Recovery reads the schedule index only: it is not disturbed.
            assert len(list(spool.iter_schedule())) == 3
            assert sorted(m.id for m in spool.iter_queued()) == sorted(m.id for m in metas[1:])
            assert spool.get(victim.id) is None
            await flush(spool)
            filed = {q.db: q for q in spool.iter_quarantine()}
            assert set(filed) == {"meta", "content", "schedule"}
            assert filed["meta"].raw == newer
            assert "unknown version 99" in filed["meta"].reason
            assert filed["content"].raw == rec.encode_content(new_message(0).content)
            assert [r.id for r in spool.iter_schedule()] == [m.id for m in metas[1:]]
            assert spool.count_queued() == 2
    assert events(logs, "spool.record_quarantined")[0]["moved"] == ["meta", "content", "schedule"]


async def test_bad_meta_and_schedule_entry_together_do_not_stop_recovery(spool_dir: Path) -> None:
    metas = await store_three(spool_dir)
    victim = metas[2]
    raw_put(spool_dir, "meta", victim.id.encode(), b"\xff\x00garbage")
    raw_put(spool_dir, "schedule", rec.schedule_key(victim), b"\x93\x03")
    async with open_spool(spool_dir) as spool:
        assert [r.id for r in spool.iter_schedule()] == [m.id for m in metas[:2]]
        await flush(spool)
        assert {q.db for q in spool.iter_quarantine()} == {"meta", "content", "schedule"}
        assert spool.count_queued() == 2
    assert len(raw_keys(spool_dir, "schedule")) == 2


async def test_bad_content_raises_record_error_and_quarantines(spool_dir: Path) -> None:
    metas = await store_three(spool_dir)
    raw_put(spool_dir, "content", metas[0].id.encode(), b"\x92\x02\x01")
    async with open_spool(spool_dir) as spool:
        with pytest.raises(RecordError, match="quarantined"):
            spool.read_content(metas[0].id)
        await flush(spool)
        assert {q.db for q in spool.iter_quarantine()} == {"meta", "content", "schedule"}
        assert spool.get(metas[0].id) is None
        assert spool.read_content(metas[1].id) == new_message(1).content


async def test_results_for_an_undecodable_message_raise_record_error(spool_dir: Path) -> None:
    metas = await store_three(spool_dir)
    raw_put(spool_dir, "meta", metas[1].id.encode(), b"not msgpack \xc1")
    async with open_spool(spool_dir) as spool:
        with pytest.raises(RecordError):
            await spool.record_results(metas[1].id, [], next_attempt=None)
        # The schedule entry was found by scanning the index and filed too.
        assert {q.db for q in spool.iter_quarantine()} == {"meta", "content", "schedule"}
        assert [r.id for r in spool.iter_schedule()] == [metas[0].id, metas[2].id]


async def test_bad_completed_and_aux_records_are_quarantined(spool_dir: Path) -> None:
    async with open_spool(spool_dir) as spool:
        meta = await spool.store(new_message(1))
        await spool.record_results(
            meta.id,
            [RecipientResult(meta.recipients[0].address, RcptStatus.DELIVERED, "250")],
            next_attempt=None,
        )
        await spool.aux("users").put(b"alice", {"quota": 5})
        await spool.aux("users").put(b"bob", {"quota": 6})
    raw_put(spool_dir, "completed", meta.id.encode(), b"\x01")
    raw_put(spool_dir, "aux.users", b"alice", b"\xc1")
    async with open_spool(spool_dir) as spool:
        assert spool.get(meta.id) is None
        assert spool.aux("users").get(b"alice") is None
        assert list(spool.aux("users").items()) == [(b"bob", {"quota": 6})]
        await flush(spool)
        assert sorted((q.db, q.key) for q in spool.iter_quarantine()) == [
            ("aux.users", b"alice"),
            ("completed", meta.id.encode()),
        ]
        assert await spool.purge_completed() == 0  # its index entry is harmless


async def test_each_bad_record_is_reported_once(spool_dir: Path) -> None:
    metas = await store_three(spool_dir)
    raw_put(spool_dir, "schedule", rec.schedule_key(metas[0]), b"")
    with capture_logs() as logs:
        async with open_spool(spool_dir) as spool:
            for _ in range(3):
                list(spool.iter_schedule())
            await flush(spool)
    assert len(events(logs, "spool.record_undecodable")) == 1
    assert len(events(logs, "spool.record_quarantined")) == 1


async def test_schedule_entry_without_an_id_in_its_key_is_filed_alone(spool_dir: Path) -> None:
    metas = await store_three(spool_dir)
    raw_put(spool_dir, "schedule", b"\x00" * 8, b"\xc1")
    async with open_spool(spool_dir) as spool:
        assert [r.id for r in spool.iter_schedule()] == [m.id for m in metas]
        await flush(spool)
        [filed] = spool.iter_quarantine()
        assert (filed.db, filed.key) == ("schedule", b"\x00" * 8)
        assert spool.count_queued() == 3
