"""A full map: typed errors, the process keeps going, and writes succeed again once space returns."""

from __future__ import annotations

from pathlib import Path

import lmdb
import pytest
import trio
from spool_helpers import hold_write_lock, wait_until

from relay.errors import SpoolFullError
from relay.model import MessageMeta, NewMessage, RcptStatus, RecipientResult
from relay.spool import Spool, open_spool
from relay.spool.env import SpoolEnv
from relay.spool.operations import WriteOp

MAP_SIZE = 1 << 20  # 256 pages of 4 KiB
CONTENT = b"x" * 5000


def big_message(n: int) -> NewMessage:
    return NewMessage("s@example.org", (f"r{n}@example.net",), CONTENT)


async def fill(spool: Spool) -> list[MessageMeta]:
    stored = []
    for n in range(1000):
        try:
            stored.append(await spool.store(big_message(n)))
        except SpoolFullError:
            return stored
    raise AssertionError("a 1 MiB map never filled up")


async def test_full_map_refuses_stores_until_space_returns(spool_dir: Path) -> None:
    async with open_spool(spool_dir, map_size=MAP_SIZE) as spool:
        stored = await fill(spool)
        assert len(stored) > 10
        with pytest.raises(SpoolFullError):
            await spool.store(big_message(-1))
        with pytest.raises(SpoolFullError):
            await spool.aux("idempotency").put(b"key", "x" * 20_000)
        # Reads and space-freeing writes still work.
        assert spool.read_content(stored[0].id) == CONTENT
        assert await spool.delete([m.id for m in stored[:5]]) == 5
        done = stored[5]
        await spool.record_results(
            done.id,
            [RecipientResult(done.recipients[0].address, RcptStatus.DELIVERED, "250")],
            next_attempt=None,
        )
        again = await spool.store(big_message(1000))
        assert spool.read_content(again.id) == CONTENT
        assert spool.count_queued() == len(stored) - 6 + 1


async def test_completing_and_purging_make_room_on_a_full_map(spool_dir: Path) -> None:
    async with open_spool(spool_dir, map_size=MAP_SIZE, completed_ttl=0.0) as spool:
        stored = await fill(spool)
        for meta in stored:
            await spool.record_results(
                meta.id,
                [RecipientResult(meta.recipients[0].address, RcptStatus.BOUNCED, "550")],
                next_attempt=None,
            )
        assert await spool.purge_completed() == len(stored)
        refilled = await fill(spool)
        assert len(refilled) >= len(stored) - 1


async def test_a_message_larger_than_the_map_is_refused(spool_dir: Path) -> None:
    async with open_spool(spool_dir, map_size=MAP_SIZE) as spool:
        with pytest.raises(SpoolFullError):
            await spool.store(NewMessage("s@example.org", ("r@example.net",), b"y" * (2 << 20)))
        meta = await spool.store(big_message(1))
        assert spool.read_content(meta.id) == CONTENT


class HugePut(WriteOp):
    """A write that does not declare its growth, so LMDB itself runs out of pages."""

    __slots__ = ()

    def apply(self, txn: lmdb.Transaction, senv: SpoolEnv) -> None:
        txn.put(b"huge", b"z" * (2 << 20), db=senv.aux["control"])


async def test_lmdb_map_full_fails_only_the_operation_that_does_not_fit(spool_dir: Path) -> None:
    async with open_spool(spool_dir, map_size=MAP_SIZE, reserve=0) as spool:
        await spool.store(big_message(0))
        batches = spool.statistics().batches
        results: list[object] = []
        async with hold_write_lock(spool_dir, MAP_SIZE) as lock, trio.open_nursery() as nursery:
            nursery.start_soon(spool.store, big_message(1))  # claimed by the blocked writer

            async def huge() -> None:
                try:
                    await spool._submit(HugePut(), 30.0)
                except SpoolFullError as exc:
                    results.append(exc)

            async def small(n: int) -> None:
                results.append(await spool.store(big_message(n)))

            await wait_until(lambda: spool.statistics().batches == batches + 1)
            nursery.start_soon(huge)
            nursery.start_soon(small, 2)
            await wait_until(lambda: spool.statistics().in_flight == 3)
            await lock.release()
        assert sum(isinstance(r, SpoolFullError) for r in results) == 1
        assert sum(isinstance(r, MessageMeta) for r in results) == 1
        stats = spool.statistics()
        assert stats.failed_commits >= 1
        assert stats.queued == 3
        assert spool.aux("control").get(b"huge") is None
