"""Delivery results, rescheduling, deletion and the completed records' lifetime."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from spool_helpers import new_message

from relay.errors import UnknownMessageError
from relay.model import Attempt, RcptStatus, RecipientResult, new_message_id
from relay.spool import open_spool
from relay.spool.operations import MAX_HISTORY

T0 = 1_800_000_000.0
RCPTS = ("a@one.example", "b@two.example", "c@one.example")


def result(address: str, status: RcptStatus, reply: str = "") -> RecipientResult:
    return RecipientResult(address, status, reply or f"{status.name} {address}")


async def test_partial_results_update_meta_and_schedule(spool_dir: Path) -> None:
    async with open_spool(spool_dir, clock=lambda: T0) as spool:
        meta = await spool.store(new_message(1, recipients=RCPTS))
        attempt = Attempt(
            T0 + 1, "mx.one.example", ("a@one.example", "c@one.example"), "250 ok", 0.5
        )
        updated = await spool.record_results(
            meta.id,
            [
                result("a@one.example", RcptStatus.DELIVERED, "250 2.0.0 ok"),
                result("c@one.example", RcptStatus.DEFERRED, "451 4.3.0 try later"),
            ],
            next_attempt=T0 + 300,
            attempt=attempt,
        )
        by_address = {r.address: r for r in updated.recipients}
        assert by_address["a@one.example"].status is RcptStatus.DELIVERED
        assert by_address["a@one.example"].reply == "250 2.0.0 ok"
        assert by_address["a@one.example"].attempts == 1
        assert by_address["c@one.example"].status is RcptStatus.DEFERRED
        assert by_address["c@one.example"].attempts == 1
        assert by_address["b@two.example"].status is RcptStatus.PENDING
        assert by_address["b@two.example"].attempts == 0
        assert updated.attempts == 1
        assert updated.history == (attempt,)
        assert updated.next_attempt == T0 + 300
        assert spool.get(meta.id) == updated
        [record] = spool.iter_schedule()
        assert record.next_attempt == T0 + 300
        assert record.domains == ("two.example", "one.example")  # in order of recipients left
        assert spool.read_content(meta.id) == new_message(1).content

        # None leaves next_attempt; domains shrink as recipients become final.
        again = await spool.record_results(
            meta.id, [result("c@one.example", RcptStatus.BOUNCED)], next_attempt=None
        )
        assert again.next_attempt == T0 + 300
        assert again.attempts == 2
        [record] = spool.iter_schedule()
        assert record.domains == ("two.example",)


async def test_all_final_moves_to_completed(spool_dir: Path) -> None:
    async with open_spool(spool_dir, clock=lambda: T0) as spool:
        meta = await spool.store(new_message(1, recipients=RCPTS[:2]))
        other = await spool.store(new_message(2))
        final = await spool.record_results(
            meta.id,
            [
                result("a@one.example", RcptStatus.DELIVERED),
                result("b@two.example", RcptStatus.BOUNCED),
            ],
            next_attempt=None,
        )
        assert final.is_final
        assert spool.get(meta.id) == final  # still answerable from the completed records
        with pytest.raises(UnknownMessageError):
            spool.read_content(meta.id)
        assert [r.id for r in spool.iter_schedule()] == [other.id]
        assert [m.id for m in spool.iter_queued()] == [other.id]
        stats = spool.statistics()
        assert (stats.queued, stats.completed) == (1, 1)
        with pytest.raises(UnknownMessageError):
            await spool.record_results(meta.id, [], next_attempt=None)


async def test_results_for_final_or_unknown_recipients_are_ignored(spool_dir: Path) -> None:
    async with open_spool(spool_dir) as spool:
        meta = await spool.store(new_message(1, recipients=RCPTS[:2]))
        await spool.record_results(
            meta.id, [result("a@one.example", RcptStatus.DELIVERED, "250 first")], next_attempt=None
        )
        updated = await spool.record_results(
            meta.id,
            [
                result("a@one.example", RcptStatus.DEFERRED, "451 late duplicate"),
                result("nobody@else.example", RcptStatus.BOUNCED),
            ],
            next_attempt=None,
        )
        first = updated.recipients[0]
        assert (first.status, first.reply, first.attempts) == (RcptStatus.DELIVERED, "250 first", 1)
        assert updated.recipients[1].status is RcptStatus.PENDING


async def test_history_keeps_the_latest_attempts(spool_dir: Path) -> None:
    async with open_spool(spool_dir, sync=False) as spool:
        meta = await spool.store(new_message(1))
        for n in range(MAX_HISTORY + 5):
            meta = await spool.record_results(
                meta.id,
                [result(meta.recipients[0].address, RcptStatus.DEFERRED)],
                next_attempt=T0 + n,
                attempt=Attempt(T0 + n, "mx", (meta.recipients[0].address,), "451"),
            )
        assert len(meta.history) == MAX_HISTORY
        assert meta.history[-1].at == T0 + MAX_HISTORY + 4
        assert meta.recipients[0].attempts == MAX_HISTORY + 5


async def test_reschedule_moves_the_schedule_entry(spool_dir: Path) -> None:
    async with open_spool(spool_dir, clock=lambda: T0) as spool:
        first = await spool.store(new_message(1))
        second = await spool.store(new_message(2))
        moved = await spool.reschedule(first.id, T0 + 3600)
        assert moved.next_attempt == T0 + 3600
        assert [r.id for r in spool.iter_schedule()] == [second.id, first.id]
        assert spool.get(first.id) == moved
        with pytest.raises(UnknownMessageError):
            await spool.reschedule(new_message_id(), T0)


async def test_delete_removes_queued_messages_only(spool_dir: Path) -> None:
    async with open_spool(spool_dir) as spool:
        metas = [await spool.store(new_message(n)) for n in range(4)]
        done = metas[3]
        await spool.record_results(
            done.id, [result(done.recipients[0].address, RcptStatus.DELIVERED)], next_attempt=None
        )
        removed = await spool.delete(
            [metas[0].id, metas[1].id, done.id, new_message_id(), "bad id é"]
        )
        assert removed == 2
        assert [r.id for r in spool.iter_schedule()] == [metas[2].id]
        assert spool.get(metas[0].id) is None
        with pytest.raises(UnknownMessageError):
            spool.read_content(metas[1].id)
        assert spool.get(done.id) is not None  # completed records are purged, not deleted
        assert await spool.delete([]) == 0


async def test_completed_records_are_purged_after_their_ttl(spool_dir: Path) -> None:
    now = [T0]
    async with open_spool(spool_dir, clock=lambda: now[0], completed_ttl=100.0) as spool:
        metas = [await spool.store(new_message(n)) for n in range(3)]
        for n, meta in enumerate(metas[:2]):
            now[0] = T0 + 10 * n  # completed at T0 and at T0 + 10
            await spool.record_results(
                meta.id,
                [result(meta.recipients[0].address, RcptStatus.DELIVERED)],
                next_attempt=None,
            )
        now[0] = T0 + 99
        assert await spool.purge_completed() == 0
        now[0] = T0 + 100
        assert await spool.purge_completed() == 1
        assert spool.get(metas[0].id) is None
        assert spool.get(metas[1].id) is not None
        now[0] = T0 + 1000
        assert await spool.purge_completed() == 1
        assert spool.get(metas[1].id) is None
        assert spool.get(metas[2].id) == metas[2]  # queued messages are untouched
        assert spool.statistics().completed == 0


async def test_purge_works_through_many_records_in_batches(
    spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("relay.spool.spool.PURGE_BATCH", 7)
    now = [T0]
    async with open_spool(spool_dir, clock=lambda: now[0], completed_ttl=1.0, sync=False) as spool:
        metas = await spool.store_many([new_message(n) for n in range(30)])
        async with trio.open_nursery() as nursery:
            for meta in metas:
                nursery.start_soon(
                    lambda m: spool.record_results(
                        m.id,
                        [result(m.recipients[0].address, RcptStatus.BOUNCED)],
                        next_attempt=None,
                    ),
                    meta,
                )
        now[0] = T0 + 2
        before = spool.statistics().commits
        assert await spool.purge_completed() == 30
        assert spool.statistics().commits - before == 5  # 7 + 7 + 7 + 7 + 2
        assert spool.statistics().completed == 0
