"""Storing and reading messages on a real LMDB environment."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import trio
from spool_helpers import new_message

from relay.errors import DuplicateMessageError, SpoolIOError, UnknownMessageError
from relay.model import MessageMeta, NewMessage, RcptStatus, ScheduleRecord, new_message_id
from relay.spool import open_spool, schedule_record_of

T0 = 1_800_000_000.0


def clock_at(t: float = T0) -> list[float]:
    return [t]


async def test_store_get_read_content_roundtrip(spool_dir: Path) -> None:
    msg = NewMessage(
        sender="bounces@sender.example",
        recipients=("a@one.example", "b@Two.Example", "c@one.example"),
        content=b"Subject: hi\r\n\r\nhello\r\n",
        tenant="acme",
        campaign="spring",
        tags=("promo", "eu"),
        metadata={"customer": "42", "x": "y"},
        smtputf8=True,
        body_8bit=True,
    )
    now = clock_at()
    async with open_spool(spool_dir, clock=lambda: now[0], max_age=3600.0) as spool:
        meta = await spool.store(msg)
        assert meta == MessageMeta(
            id=meta.id,
            sender="bounces@sender.example",
            recipients=meta.recipients,
            created=T0,
            expires=T0 + 3600.0,
            next_attempt=T0,
            size=len(msg.content),
            attempts=0,
            tenant="acme",
            campaign="spring",
            tags=("promo", "eu"),
            metadata={"customer": "42", "x": "y"},
            send_at=None,
            smtputf8=True,
            body_8bit=True,
            history=(),
        )
        assert [r.address for r in meta.recipients] == list(msg.recipients)
        assert all(r.status is RcptStatus.PENDING and r.attempts == 0 for r in meta.recipients)
        assert len(meta.id) == 26
        assert spool.get(meta.id) == meta
        assert spool.read_content(meta.id) == msg.content
        assert spool.count_queued() == 1
        assert list(spool.iter_queued()) == [meta]
        assert list(spool.iter_schedule()) == [
            ScheduleRecord(
                meta.id, T0, T0 + 3600.0, "acme", "spring", ("one.example", "two.example")
            )
        ]
        assert list(spool.iter_schedule()) == [schedule_record_of(meta)]


async def test_messages_survive_reopening(spool_dir: Path) -> None:
    async with open_spool(spool_dir) as spool:
        metas = [await spool.store(new_message(n)) for n in range(5)]
    async with open_spool(spool_dir) as spool:
        for n, meta in enumerate(metas):
            assert spool.get(meta.id) == meta
            assert spool.read_content(meta.id) == new_message(n).content
        assert spool.count_queued() == 5


async def test_ids_sort_by_creation_time(spool_dir: Path) -> None:
    now = clock_at()
    async with open_spool(spool_dir, clock=lambda: now[0]) as spool:
        ids = []
        for n in range(5):
            now[0] = T0 + n
            ids.append((await spool.store(new_message(n))).id)
        assert ids == sorted(ids)
        assert [m.id for m in spool.iter_queued()] == ids


async def test_schedule_is_ordered_by_next_attempt_then_id(spool_dir: Path) -> None:
    now = clock_at()
    async with open_spool(spool_dir, clock=lambda: now[0]) as spool:
        later = await spool.store(new_message(1, send_at=T0 + 600))
        first = await spool.store(new_message(2))
        second = await spool.store(new_message(3))
        past = await spool.store(new_message(4, send_at=T0 - 60))
        assert later.next_attempt == later.send_at == T0 + 600
        order = [record.id for record in spool.iter_schedule()]
        assert order == [past.id, *sorted([first.id, second.id]), later.id]


async def test_preassigned_id_is_kept_and_reuse_is_refused(spool_dir: Path) -> None:
    message_id = new_message_id(T0)
    async with open_spool(spool_dir) as spool:
        meta = await spool.store(new_message(1, message_id=message_id))
        assert meta.id == message_id
        with pytest.raises(DuplicateMessageError):
            await spool.store(new_message(2, message_id=message_id))
        assert spool.read_content(message_id) == new_message(1).content
        assert spool.count_queued() == 1


async def test_store_many_is_all_or_nothing(spool_dir: Path) -> None:
    taken = new_message_id(T0)
    async with open_spool(spool_dir) as spool:
        await spool.store(new_message(0, message_id=taken))
        batch = [new_message(1), new_message(2, message_id=taken), new_message(3)]
        with pytest.raises(DuplicateMessageError):
            await spool.store_many(batch)
        assert spool.count_queued() == 1
        metas = await spool.store_many([new_message(n) for n in range(1, 4)])
        assert [spool.read_content(m.id) for m in metas] == [
            new_message(n).content for n in range(1, 4)
        ]
        assert spool.count_queued() == 4
        assert await spool.store_many([]) == []


async def test_invalid_messages_are_refused_before_the_writer(spool_dir: Path) -> None:
    async with open_spool(spool_dir) as spool:
        with pytest.raises(ValueError, match="recipient"):
            await spool.store(NewMessage("s@example.org", (), b"x"))
        with pytest.raises(ValueError, match="message id"):
            await spool.store(new_message(1, message_id="not ascii \u00e9"))
        assert spool.statistics().ops == 0


async def test_unknown_ids(spool_dir: Path) -> None:
    async with open_spool(spool_dir) as spool:
        assert spool.get(new_message_id()) is None
        assert spool.get("") is None
        with pytest.raises(UnknownMessageError):
            spool.read_content(new_message_id())
        with pytest.raises(UnknownMessageError):
            spool.read_content("x" * 1000)


async def test_store_after_close_fails_cleanly(spool_dir: Path) -> None:
    async with open_spool(spool_dir) as spool:
        pass
    with pytest.raises(SpoolIOError):
        await spool.store(new_message(1))


async def test_spool_directory_is_private(spool_dir: Path) -> None:
    async with open_spool(spool_dir) as spool:
        assert spool.path == spool_dir
    assert stat.S_IMODE(os.stat(spool_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(spool_dir / "data.mdb").st_mode) & 0o077 == 0


async def test_many_concurrent_stores_all_land(spool_dir: Path) -> None:
    async with open_spool(spool_dir) as spool:
        metas: list[MessageMeta] = []

        async def storer(n: int) -> None:
            metas.append(await spool.store(new_message(n)))

        async with trio.open_nursery() as nursery:
            for n in range(300):
                nursery.start_soon(storer, n)
        assert len({m.id for m in metas}) == 300
        assert spool.count_queued() == 300
        stats = spool.statistics()
        assert stats.stored == 300
        assert stats.in_flight == 0
        assert stats.sync is True
