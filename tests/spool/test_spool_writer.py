"""The writer thread: group commit, deadlines instead of cancellation, the commit queue bound.

To make batching and waiting deterministic, a second process holds LMDB's write
lock: the spool's writer then blocks in ``begin(write=True)`` with what it has
claimed, and everything submitted meanwhile waits in its queue.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from spool_helpers import hold_write_lock, new_message, wait_until
from structlog.testing import capture_logs

from relay.errors import SpoolTimeoutError
from relay.model import MessageMeta, new_message_id
from relay.spool import Spool, open_spool


async def test_group_commit_takes_everything_waiting_in_one_transaction(spool_dir: Path) -> None:
    async with open_spool(spool_dir) as spool:
        await spool.store(new_message(0))  # creates the environment's pages
        before = spool.statistics()
        stored: list[MessageMeta] = []

        async def storer(n: int) -> None:
            stored.append(await spool.store(new_message(n)))

        async with hold_write_lock(spool_dir) as lock, trio.open_nursery() as nursery:
            for n in range(200):
                nursery.start_soon(storer, n)
            await wait_until(lambda: spool.statistics().in_flight == 200)
            await lock.release()
        after = spool.statistics()
        assert len(stored) == 200
        assert after.stored - before.stored == 200
        # One commit for what the writer had claimed when it blocked, one for the rest.
        assert after.commits - before.commits <= 2 < 200
        assert after.largest_batch >= 100


async def test_group_commit_without_a_held_lock_still_batches(spool_dir: Path) -> None:
    async with open_spool(spool_dir) as spool:
        async with trio.open_nursery() as nursery:
            for n in range(200):
                nursery.start_soon(spool.store, new_message(n))
        stats = spool.statistics()
        assert stats.stored == 200
        assert stats.commits <= 200


async def test_batch_size_one_commits_each_message(spool_dir: Path) -> None:
    async with open_spool(spool_dir, max_batch=1) as spool:
        async with trio.open_nursery() as nursery:
            for n in range(20):
                nursery.start_soon(spool.store, new_message(n))
        stats = spool.statistics()
        assert stats.stored == stats.commits == 20
        assert stats.largest_batch == 1


async def test_unclaimed_write_past_its_deadline_is_never_applied(spool_dir: Path) -> None:
    late_id = new_message_id()
    async with open_spool(spool_dir) as spool:
        await spool.store(new_message(0))
        batches = spool.statistics().batches
        async with hold_write_lock(spool_dir) as lock, trio.open_nursery() as nursery:
            first: list[MessageMeta] = []

            async def blocked_store() -> None:
                first.append(await spool.store(new_message(1), timeout=60))

            nursery.start_soon(blocked_store)
            # The writer has claimed the first store and waits for the lock.
            await wait_until(lambda: spool.statistics().batches == batches + 1)
            with pytest.raises(SpoolTimeoutError):
                await spool.store(new_message(2, message_id=late_id), timeout=0.2)
            await lock.release()
        assert first and spool.get(first[0].id) == first[0]
        after = await spool.store(new_message(3))
        assert spool.get(after.id) == after
        assert spool.get(late_id) is None  # abandoned before the writer took it
        assert spool.count_queued() == 3


async def test_cancelled_waiter_does_not_cancel_a_claimed_write(spool_dir: Path) -> None:
    message_id = new_message_id()
    async with open_spool(spool_dir) as spool:
        await spool.store(new_message(0))
        batches = spool.statistics().batches
        async with hold_write_lock(spool_dir) as lock:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(spool.store, new_message(1, message_id=message_id))
                await wait_until(lambda: spool.statistics().batches == batches + 1)
                nursery.cancel_scope.cancel()  # the caller goes away mid-commit
            await lock.release()
        await spool.store(new_message(2))  # queued behind the claimed write
        assert spool.read_content(message_id) == new_message(1).content


async def test_deadline_on_a_claimed_write_leaves_it_atomic(spool_dir: Path) -> None:
    message_id = new_message_id()
    async with open_spool(spool_dir) as spool:
        await spool.store(new_message(0))
        async with hold_write_lock(spool_dir) as lock:
            with pytest.raises(SpoolTimeoutError):
                await spool.store(new_message(1, message_id=message_id), timeout=0.3)
            await lock.release()
        await spool.store(new_message(2))
        # Stored or not, depending on whether the writer had it: never half.
        meta = spool.get(message_id)
        if meta is not None:
            assert spool.read_content(message_id) == new_message(1).content
            assert any(r.id == message_id for r in spool.iter_schedule())
        else:
            assert all(r.id != message_id for r in spool.iter_schedule())


async def test_full_commit_queue_times_out_waiting_for_room(spool_dir: Path) -> None:
    async with open_spool(spool_dir, commit_queue=2) as spool:
        await spool.store(new_message(0))
        async with hold_write_lock(spool_dir) as lock, trio.open_nursery() as nursery:
            nursery.start_soon(spool.store, new_message(1))
            nursery.start_soon(spool.store, new_message(2))
            await wait_until(lambda: spool.statistics().in_flight == 2)
            with pytest.raises(SpoolTimeoutError, match="commit queue"):
                await spool.store(new_message(3), timeout=0.2)
            await lock.release()
        assert spool.count_queued() == 3
        assert spool.statistics().in_flight == 0


async def test_closing_waits_for_queued_writes(spool_dir: Path) -> None:
    results: list[MessageMeta] = []

    async def storer(spool: Spool, n: int) -> None:
        results.append(await spool.store(new_message(n)))

    async with trio.open_nursery() as nursery, open_spool(spool_dir) as spool:
        for n in range(50):
            nursery.start_soon(storer, spool, n)
        await wait_until(lambda: spool.statistics().in_flight + len(results) == 50)
    # Closing let the writer commit and answer every write that was queued.
    assert len(results) == 50
    async with open_spool(spool_dir) as spool:
        assert spool.count_queued() == 50


async def test_deadlines_are_real_time_so_an_autojump_clock_does_not_fire_them(
    spool_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # While the writer thread works, every trio task waits: an autojump clock jumps
    # ahead at once.  Writes must not time out because of that.
    with capture_logs() as logs:
        async with open_spool(spool_dir) as spool:
            start = trio.current_time()
            metas = [await spool.store(new_message(n), timeout=1.0) for n in range(20)]
            assert len({m.id for m in metas}) == 20
            assert trio.current_time() == start  # no trio timer was involved
    assert logs == []  # in particular, closing did not give up on the writer
    async with open_spool(spool_dir) as spool:  # closed properly: it opens again
        assert spool.count_queued() == 20
