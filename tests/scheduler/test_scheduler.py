"""relay.scheduler.Scheduler against a real spool, driven by a MockClock."""

from __future__ import annotations

import random
from collections.abc import Hashable
from typing import Any

import pytest
import trio
import trio.testing
from scheduler_support import MAX_AGE, T0, frozen, message, store, wall

from relay.model import (
    Attempt,
    MessageMeta,
    RcptStatus,
    Recipient,
    RecipientResult,
)
from relay.scheduler import (
    Jitter,
    Job,
    ReadyQueue,
    RetryPolicy,
    Scheduler,
    admin,
)
from relay.scheduler.scheduler import NO_OUTCOME_REPLY, READY_KEY_RETRY
from relay.spool import Spool

DELIVERED, DEFERRED, BOUNCED = RcptStatus.DELIVERED, RcptStatus.DEFERRED, RcptStatus.BOUNCED


class Announced:
    """An `on_ready_queue` callback that lets a test wait for a ready queue."""

    def __init__(self) -> None:
        self.queues: dict[Hashable, ReadyQueue] = {}
        self._changed = trio.Event()

    def __call__(self, ready: ReadyQueue) -> None:
        self.queues[ready.key] = ready
        self._changed.set()
        self._changed = trio.Event()

    async def get(self, key: Hashable) -> ReadyQueue:
        while key not in self.queues:
            await self._changed.wait()
        return self.queues[key]

    async def job(self, key: Hashable) -> Job:
        return await (await self.get(key)).get()


class Bounces:
    """A bounce hook that records what it was called with."""

    def __init__(self) -> None:
        self.calls: list[tuple[MessageMeta, list[Recipient]]] = []
        self.called = trio.Event()

    async def __call__(self, meta: MessageMeta, recipients: Any) -> None:
        self.calls.append((meta, list(recipients)))
        self.called.set()


async def start(nursery: trio.Nursery, spool: Spool, **kwargs: Any) -> Scheduler:
    kwargs.setdefault("clock", wall)
    kwargs.setdefault("rng", random.Random(1))
    scheduler = Scheduler(spool, **kwargs)
    await nursery.start(scheduler.run)
    return scheduler


def attempt_for(job: Job, reply: str) -> Attempt:
    return Attempt(at=wall(), mx="mx.example.com", recipients=job.recipients, reply=reply)


async def report(
    scheduler: Scheduler, job: Job, status: RcptStatus, reply: str
) -> MessageMeta | None:
    results = [RecipientResult(a, status, reply, "mx.example.com") for a in job.recipients]
    with frozen():
        return await scheduler.report(job, results, attempt_for(job, reply))


# --- recovery -----------------------------------------------------------------------------


async def test_recover_reads_only_the_schedule_index(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    metas = await store(
        spool,
        [message(f"u{i}@d{i % 3}.example") for i in range(30)]
        + [message("a@x.example", "b@y.example", "c@x.example", campaign="multi")]
        + [message("late@z.example", send_at=T0 + 7200)],
    )
    with frozen():
        await spool.record_results(
            metas[0].id,
            [RecipientResult("u0@d0.example", DELIVERED, "250 ok")],
            next_attempt=None,
        )

    def forbidden(*_args: object) -> None:
        raise AssertionError("recover() must read the schedule index only")

    monkeypatch.setattr(spool, "get", forbidden)
    monkeypatch.setattr(spool, "iter_queued", forbidden)
    scheduler = Scheduler(spool, clock=wall)
    assert await scheduler.recover() == 31
    monkeypatch.undo()

    stats = scheduler.statistics()
    assert stats.scheduled == 29 + 2 + 1  # the multi-domain message has two entries
    entries = {
        (key.domain, message_id): due for key, message_id, due in scheduler.scheduled_entries()
    }
    assert metas[0].id not in {message_id for _, message_id in entries}
    assert entries[("x.example", metas[30].id)] == pytest.approx(metas[30].next_attempt, abs=1e-3)
    assert entries[("y.example", metas[30].id)] == pytest.approx(metas[30].next_attempt, abs=1e-3)
    assert entries[("z.example", metas[31].id)] == pytest.approx(T0 + 7200, abs=1e-3)
    keys = {key for key, _, _ in scheduler.scheduled_entries()}
    assert {k.domain for k in keys} == {
        "d0.example",
        "d1.example",
        "d2.example",
        "x.example",
        "y.example",
        "z.example",
    }


async def test_recovered_messages_are_dispatched(spool: Spool, autojump_clock: Any) -> None:
    metas = await store(spool, [message(f"u{i}@example.com") for i in range(5)])
    announced = Announced()
    scheduler = Scheduler(spool, clock=wall, on_ready_queue=announced)
    await scheduler.recover()
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        ready = await announced.get("example.com")
        jobs = [await ready.get() for _ in metas]
        assert sorted(job.message_id for job in jobs) == sorted(m.id for m in metas)
        assert all(job.attempt == 1 and job.sender == "news@acme.example" for job in jobs)
        nursery.cancel_scope.cancel()


# --- timers: send_at, backoff, expiry --------------------------------------------------------


async def test_send_at_holds_a_message_until_its_time(spool: Spool, autojump_clock: Any) -> None:
    announced = Announced()
    async with trio.open_nursery() as nursery:
        scheduler = await start(nursery, spool, on_ready_queue=announced)
        [meta] = await store(spool, [message("a@example.com", send_at=wall() + 3600)])
        scheduler.add(meta)
        job = await announced.job("example.com")
        assert job.message_id == meta.id
        assert 3600 <= trio.current_time() < 3601
        nursery.cancel_scope.cancel()


async def test_deferred_is_rescheduled_with_backoff(spool: Spool, autojump_clock: Any) -> None:
    announced = Announced()
    retry = RetryPolicy(min_backoff=300.0, max_backoff=4000.0, jitter=Jitter.FULL)
    async with trio.open_nursery() as nursery:
        scheduler = await start(nursery, spool, on_ready_queue=announced, retry=retry)
        [meta] = await store(spool, [message("a@example.com")])
        scheduler.add(meta)
        job = await announced.job("example.com")
        reported_at = wall()
        updated = await report(scheduler, job, DEFERRED, "450 4.2.0 mailbox busy")
        assert updated is not None and updated.recipients[0].status is DEFERRED
        assert (
            reported_at + 300 <= updated.next_attempt <= reported_at + 600
        )  # attempt 1: [min, 2 min]
        [(_, _, due)] = list(scheduler.scheduled_entries())
        assert due == pytest.approx(updated.next_attempt, abs=1e-3)

        second = await announced.job("example.com")
        assert wall() == pytest.approx(updated.next_attempt, abs=0.01)
        assert second.attempt == 2 and second.recipients == ("a@example.com",)
        updated = await report(scheduler, second, DEFERRED, "450 4.2.0 mailbox busy")
        assert updated is not None
        assert wall() + 300 <= updated.next_attempt <= wall() + 1200  # attempt 2: [min, 4 min]
        nursery.cancel_scope.cancel()


async def test_deferral_after_expiry_bounces_with_4_4_7(spool: Spool, autojump_clock: Any) -> None:
    announced, bounces = Announced(), Bounces()
    async with trio.open_nursery() as nursery:
        scheduler = await start(
            nursery, spool, on_ready_queue=announced, bounce_hook=bounces, refresh_interval=86400
        )
        [meta] = await store(spool, [message("a@example.com")])
        scheduler.add(meta)
        job = await announced.job("example.com")
        await trio.sleep(MAX_AGE)  # the attempt takes "five days"
        updated = await report(scheduler, job, DEFERRED, "450 4.2.0 mailbox busy")
        assert updated is not None and updated.is_final
        rcpt = updated.recipients[0]
        assert rcpt.status is BOUNCED and rcpt.reply.startswith("451 4.4.7 ")
        assert "450 4.2.0 mailbox busy" in rcpt.reply
        assert [r.address for r in bounces.calls[0][1]] == ["a@example.com"]
        assert scheduler.statistics().scheduled == 0
        nursery.cancel_scope.cancel()


async def test_a_message_expires_in_the_queue_with_4_4_7(spool: Spool, autojump_clock: Any) -> None:
    # Retries never go past expiry: the last one falls due at the expiry time, and
    # then every pending recipient bounces (RFC 3463 4.4.7) without another attempt.
    announced, bounces = Announced(), Bounces()
    retry = RetryPolicy(min_backoff=6 * 86400.0, max_backoff=10 * 86400.0)
    async with trio.open_nursery() as nursery:
        scheduler = await start(
            nursery,
            spool,
            on_ready_queue=announced,
            bounce_hook=bounces,
            retry=retry,
            refresh_interval=86400,
        )
        [meta] = await store(spool, [message("a@example.com", "b@example.com")])
        scheduler.add(meta)
        job = await announced.job("example.com")
        updated = await report(scheduler, job, DEFERRED, "421 4.7.0 try later")
        assert updated is not None and updated.next_attempt == pytest.approx(meta.expires)
        await trio.sleep_until(meta.expires - T0 + 1)
        with frozen():
            await bounces.called.wait()
        [(bounced_meta, recipients)] = bounces.calls
        assert bounced_meta.id == meta.id and bounced_meta.is_final
        assert {r.address for r in recipients} == {"a@example.com", "b@example.com"}
        assert all(r.reply.startswith("451 4.4.7 ") for r in recipients)
        ready = announced.queues["example.com"]
        assert len(ready) == 0  # no further attempt was made
        nursery.cancel_scope.cancel()


# --- report() --------------------------------------------------------------------------------


async def test_report_delivered_finishes_the_message(spool: Spool, autojump_clock: Any) -> None:
    announced = Announced()
    async with trio.open_nursery() as nursery:
        scheduler = await start(nursery, spool, on_ready_queue=announced)
        [meta] = await store(spool, [message("a@example.com")])
        scheduler.add(meta)
        job = await announced.job("example.com")
        assert scheduler.statistics().in_flight == 1
        updated = await report(scheduler, job, DELIVERED, "250 2.0.0 queued as X")
        assert updated is not None and updated.is_final
        assert updated.history[-1].reply == "250 2.0.0 queued as X"
        stats = scheduler.statistics()
        assert stats.in_flight == 0 and stats.scheduled == 0
        nursery.cancel_scope.cancel()


async def test_report_bounced_calls_the_bounce_hook(spool: Spool, autojump_clock: Any) -> None:
    announced, bounces = Announced(), Bounces()
    async with trio.open_nursery() as nursery:
        scheduler = await start(nursery, spool, on_ready_queue=announced, bounce_hook=bounces)
        [meta] = await store(spool, [message("a@example.com")])
        scheduler.add(meta)
        job = await announced.job("example.com")
        await report(scheduler, job, BOUNCED, "550 5.1.1 no such user")
        [(hook_meta, recipients)] = bounces.calls
        assert hook_meta.id == meta.id
        assert recipients == [Recipient("a@example.com", BOUNCED, "550 5.1.1 no such user", 1)]
        assert scheduler.statistics().scheduled == 0
        nursery.cancel_scope.cancel()


async def test_recipients_split_into_jobs_and_rescheduled_once(
    spool: Spool, autojump_clock: Any
) -> None:
    announced, bounces = Announced(), Bounces()
    rcpts = [f"r{i}@example.com" for i in range(5)]
    async with trio.open_nursery() as nursery:
        scheduler = await start(
            nursery, spool, on_ready_queue=announced, bounce_hook=bounces, max_rcpt_per_txn=2
        )
        [meta] = await store(spool, [message(*rcpts, "other@example.org")])
        scheduler.add(meta)
        ready = await announced.get("example.com")
        jobs = [await ready.get() for _ in range(3)]
        assert [len(j.recipients) for j in jobs] == [2, 2, 1]
        assert sorted(a for j in jobs for a in j.recipients) == rcpts

        await report(scheduler, jobs[0], DELIVERED, "250 ok")
        mixed = [
            RecipientResult(jobs[1].recipients[0], BOUNCED, "550 5.1.1 unknown"),
            RecipientResult(jobs[1].recipients[1], DEFERRED, "452 4.2.2 over quota"),
        ]
        with frozen():
            await scheduler.report(jobs[1], mixed, attempt_for(jobs[1], "mixed"))
        assert scheduler.statistics().in_flight >= 1  # jobs[2] still out
        await report(scheduler, jobs[2], DEFERRED, "451 4.3.0 later")
        domains = [key.domain for key, _, _ in scheduler.scheduled_entries()]
        assert domains.count("example.com") == 1  # one entry for the pair, not one per job
        assert len(bounces.calls) == 1

        retry = await ready.get()
        assert set(retry.recipients) == {jobs[1].recipients[1], jobs[2].recipients[0]}
        assert retry.attempt == 2
        nursery.cancel_scope.cancel()


async def test_missing_results_count_as_deferred(spool: Spool, autojump_clock: Any) -> None:
    announced = Announced()
    async with trio.open_nursery() as nursery:
        scheduler = await start(nursery, spool, on_ready_queue=announced)
        [meta] = await store(spool, [message("a@example.com", "b@example.com")])
        scheduler.add(meta)
        job = await announced.job("example.com")
        results = [
            RecipientResult("a@example.com", DELIVERED, "250 ok"),
            RecipientResult("stranger@example.com", DELIVERED, "250 ok"),  # not in the job
        ]
        with frozen():
            updated = await scheduler.report(job, results, attempt_for(job, "250 ok"))
        assert updated is not None
        by_address = {r.address: r for r in updated.recipients}
        assert by_address["a@example.com"].status is DELIVERED
        assert by_address["b@example.com"].status is DEFERRED
        assert by_address["b@example.com"].reply == NO_OUTCOME_REPLY
        assert "stranger@example.com" not in by_address
        nursery.cancel_scope.cancel()


async def test_multi_domain_next_attempt_never_delays_another_domain(
    spool: Spool, autojump_clock: Any
) -> None:
    announced = Announced()
    async with trio.open_nursery() as nursery:
        scheduler = await start(nursery, spool, on_ready_queue=announced)
        [meta] = await store(spool, [message("a@x.example", "b@y.example")])
        scheduler.add(meta)
        job_x = await announced.job("x.example")
        job_y = await announced.job("y.example")
        updated = await report(scheduler, job_x, DEFERRED, "450 later")
        assert updated is not None
        assert updated.next_attempt <= meta.next_attempt  # y is still pending: keep the earlier
        updated = await report(scheduler, job_y, DEFERRED, "450 later")
        assert updated is not None
        due = {key.domain: at for key, _, at in scheduler.scheduled_entries()}
        assert updated.next_attempt <= min(due.values()) + 1e-3
        nursery.cancel_scope.cancel()


async def test_release_hands_a_job_back_without_an_attempt(
    spool: Spool, autojump_clock: Any
) -> None:
    announced = Announced()
    async with trio.open_nursery() as nursery:
        scheduler = await start(nursery, spool, on_ready_queue=announced)
        [meta] = await store(spool, [message("a@example.com")])
        scheduler.add(meta)
        job = await announced.job("example.com")
        scheduler.release(job, delay=60.0)
        again = await announced.job("example.com")
        assert 60 <= trio.current_time() < 61
        assert again.attempt == 1 and again.serial != job.serial
        stored = spool.get(meta.id)
        assert stored is not None and stored.attempts == 0
        nursery.cancel_scope.cancel()


async def test_deleted_message_is_skipped_at_dispatch(spool: Spool, autojump_clock: Any) -> None:
    announced = Announced()
    async with trio.open_nursery() as nursery:
        scheduler = await start(nursery, spool, on_ready_queue=announced)
        gone, kept = await store(
            spool,
            [message("a@example.com", send_at=T0 + 60), message("b@example.com", send_at=T0 + 61)],
        )
        scheduler.add(gone)
        scheduler.add(kept)
        with frozen():
            await spool.delete([gone.id])
        job = await announced.job("example.com")
        assert job.message_id == kept.id
        nursery.cancel_scope.cancel()


# --- fairness and back-pressure ------------------------------------------------------------


async def test_round_robin_keeps_a_small_tenant_moving(spool: Spool, autojump_clock: Any) -> None:
    # One huge campaign and a small tenant's transactional mail share a destination
    # whose ready queue is the bottleneck: the small tenant waits for one round of
    # the round-robin, not for the campaign to drain.
    announced = Announced()
    async with trio.open_nursery() as nursery:
        scheduler = await start(nursery, spool, on_ready_queue=announced, ready_capacity=5)
        blast = await store(
            spool,
            [message(f"u{i}@example.com", tenant="big", campaign="blast") for i in range(300)],
        )
        for meta in blast:
            scheduler.add(meta)
        ready = await announced.get("example.com")
        taken = [await ready.get() for _ in range(10)]
        tx = await store(
            spool,
            [message(f"t{i}@example.com", tenant="small", campaign="tx") for i in range(3)],
        )
        for meta in tx:
            scheduler.add(meta)
        order = []
        for _ in range(20):
            taken.append(await ready.get())
            order.append(taken[-1].tenant)
        positions = [i for i, tenant in enumerate(order) if tenant == "small"]
        assert len(positions) == 3
        # 5 were already queued; after them the two queues alternate.
        assert positions[-1] <= 5 + 2 * 3
        assert scheduler.statistics().scheduled > 250  # the campaign is far from drained
        nursery.cancel_scope.cancel()


async def test_round_robin_across_domains_interleaves(spool: Spool, autojump_clock: Any) -> None:
    async def same_destination(domain: str, tenant: str) -> str:
        return "shared-mx"

    announced = Announced()
    async with trio.open_nursery() as nursery:
        scheduler = await start(
            nursery, spool, on_ready_queue=announced, ready_key=same_destination
        )
        metas = await store(
            spool,
            [message(f"u{i}@big.example", campaign="blast") for i in range(50)]
            + [message(f"u{i}@small.example", campaign="tx") for i in range(3)],
        )
        for meta in metas:
            scheduler.add(meta)
        ready = await announced.get("shared-mx")
        await trio.testing.wait_all_tasks_blocked()
        first = [ready.get_nowait().domain for _ in range(6)]
        assert first.count("small.example") == 3
        nursery.cancel_scope.cancel()


async def test_ready_queue_is_bounded_and_keeps_the_rest_scheduled(
    spool: Spool, autojump_clock: Any
) -> None:
    announced = Announced()
    async with trio.open_nursery() as nursery:
        scheduler = await start(nursery, spool, on_ready_queue=announced, ready_capacity=4)
        metas = await store(spool, [message(f"u{i}@example.com") for i in range(50)])
        for meta in metas:
            scheduler.add(meta)
        ready = await announced.get("example.com")
        await trio.testing.wait_all_tasks_blocked()
        stats = scheduler.statistics()
        assert len(ready) == 4
        assert stats.scheduled == 46 and stats.parked == 1 and stats.in_flight == 4
        ready.get_nowait()
        ready.get_nowait()
        await trio.testing.wait_all_tasks_blocked()
        assert len(ready) == 4
        assert scheduler.statistics().scheduled == 44
        nursery.cancel_scope.cancel()


# --- suspensions ---------------------------------------------------------------------------


async def test_suspension_written_by_another_process_is_honoured(
    spool: Spool, autojump_clock: Any
) -> None:
    announced = Announced()
    async with trio.open_nursery() as nursery:
        scheduler = await start(nursery, spool, on_ready_queue=announced, refresh_interval=5.0)
        with frozen():
            await admin.suspend(spool, "domain", "Example.COM", reason="complaints")
        await trio.sleep(5.5)  # one refresh interval: the scheduler has re-read the table
        assert scheduler.suspended("example.com", "acme")
        [meta] = await store(spool, [message("a@example.com")])
        scheduler.add(meta)
        with trio.move_on_after(3600) as waited:
            await announced.job("example.com")
        assert waited.cancelled_caught
        assert scheduler.statistics().suspended == 1

        resumed_at = trio.current_time()
        with frozen():
            assert await admin.resume(spool, "domain", "example.com")
        job = await announced.job("example.com")
        assert job.message_id == meta.id
        assert trio.current_time() - resumed_at <= 5.0 + 0.01
        nursery.cancel_scope.cancel()


async def test_suspending_a_tenant_holds_back_jobs_already_ready(
    spool: Spool, autojump_clock: Any
) -> None:
    announced = Announced()
    async with trio.open_nursery() as nursery:
        scheduler = await start(nursery, spool, on_ready_queue=announced)
        held, other = await store(
            spool, [message("a@example.com", tenant="t1"), message("b@example.com", tenant="t2")]
        )
        scheduler.add(held)
        scheduler.add(other)
        ready = await announced.get("example.com")
        await trio.testing.wait_all_tasks_blocked()
        assert len(ready) == 2
        with frozen():
            await admin.suspend(spool, "tenant", "t1", scheduler=scheduler)
        job = ready.get_nowait()
        assert job.tenant == "t2"
        with pytest.raises(trio.WouldBlock):
            ready.get_nowait()  # t1's job went back to its (suspended) scheduled queue
        await trio.testing.wait_all_tasks_blocked()
        stats = scheduler.statistics()
        assert stats.suspended == 1 and stats.scheduled == 1
        with frozen():
            await admin.resume(spool, "tenant", "t1", scheduler=scheduler)
        again = await ready.get()
        assert again.message_id == held.id
        nursery.cancel_scope.cancel()


async def test_a_timed_suspension_lifts_by_itself(spool: Spool, autojump_clock: Any) -> None:
    announced = Announced()
    async with trio.open_nursery() as nursery:
        scheduler = await start(nursery, spool, on_ready_queue=announced, refresh_interval=5.0)
        with frozen():
            await admin.suspend(spool, "domain", "example.com", duration=600.0, now=wall())
        scheduler.refresh_suspensions()
        [meta] = await store(spool, [message("a@example.com")])
        scheduler.add(meta)
        await announced.job("example.com")
        assert 600 <= trio.current_time() <= 605 + 0.01
        nursery.cancel_scope.cancel()


# --- destination feedback lives on the ready queue ---------------------------------------------


async def test_ready_queue_feedback_and_rates(spool: Spool, autojump_clock: Any) -> None:
    from relay.scheduler import DestinationPolicy, FeedbackPolicy

    policy = DestinationPolicy(
        feedback=FeedbackPolicy(initial=4, maximum=8, dead_after=2, cooldown=120.0),
        messages_per_second=2.0,
        burst=1.0,
    )
    announced = Announced()
    async with trio.open_nursery() as nursery:
        scheduler = await start(nursery, spool, on_ready_queue=announced, destination=policy)
        [meta] = await store(spool, [message("a@example.com")])
        scheduler.add(meta)
        ready = await announced.get("example.com")
        assert ready.concurrency_limit() == 4
        ready.throttled()  # 421
        assert ready.concurrency_limit() == 2
        ready.connection_failed()
        assert ready.is_dead() and ready.concurrency_limit() == 0
        await trio.sleep(120)
        assert ready.concurrency_limit() == 1
        ready.delivered()
        assert ready.concurrency_limit() == 2
        assert ready.message_wait() == 0.0
        assert ready.message_wait() == pytest.approx(0.5)
        stats = ready.statistics()
        assert stats.key == "example.com" and stats.concurrency == 2 and not stats.dead
        nursery.cancel_scope.cancel()


async def test_idle_ready_queues_are_reaped(spool: Spool, autojump_clock: Any) -> None:
    announced = Announced()
    async with trio.open_nursery() as nursery:
        scheduler = await start(
            nursery, spool, on_ready_queue=announced, refresh_interval=10.0, ready_idle_ttl=60.0
        )
        [meta] = await store(spool, [message("a@example.com")])
        scheduler.add(meta)
        ready = await announced.get("example.com")
        job = await ready.get()
        await report(scheduler, job, DELIVERED, "250 ok")
        with pytest.raises(trio.EndOfChannel):
            await ready.get()  # closed once idle for a minute
        assert "example.com" not in scheduler.ready_queues
        nursery.cancel_scope.cancel()


# --- robustness ----------------------------------------------------------------------------------


async def test_a_failing_ready_key_function_delays_the_queue(
    spool: Spool, autojump_clock: Any
) -> None:
    calls = []

    async def flaky(domain: str, tenant: str) -> str:
        calls.append(trio.current_time())
        if len(calls) == 1:
            raise OSError("resolver down")
        return domain

    announced = Announced()
    async with trio.open_nursery() as nursery:
        scheduler = await start(nursery, spool, on_ready_queue=announced, ready_key=flaky)
        [meta] = await store(spool, [message("a@example.com")])
        scheduler.add(meta)
        job = await announced.job("example.com")
        assert job.message_id == meta.id
        assert calls[1] - calls[0] == pytest.approx(READY_KEY_RETRY, abs=0.01)
        nursery.cancel_scope.cancel()


async def test_a_duplicate_report_is_harmless(spool: Spool, autojump_clock: Any) -> None:
    announced, bounces = Announced(), Bounces()
    async with trio.open_nursery() as nursery:
        scheduler = await start(nursery, spool, on_ready_queue=announced, bounce_hook=bounces)
        [meta] = await store(spool, [message("a@example.com", "b@example.com")])
        scheduler.add(meta)
        job = await announced.job("example.com")
        results = [
            RecipientResult("a@example.com", BOUNCED, "550 5.1.1 unknown"),
            RecipientResult("b@example.com", DEFERRED, "450 busy"),
        ]
        with frozen():
            await scheduler.report(job, results, attempt_for(job, "x"))
            await scheduler.report(job, results, attempt_for(job, "x"))
        assert len(bounces.calls) == 1  # a@ was bounced once, not twice
        assert scheduler.statistics().in_flight == 0
        stored = spool.get(meta.id)
        assert stored is not None and stored.recipients[0].attempts == 1
        nursery.cancel_scope.cancel()


async def test_superseded_wakeups_do_not_pile_up(spool: Spool, autojump_clock: Any) -> None:
    # A campaign scheduled latest-first moves its queue's wake-up earlier every time.
    metas = await store(
        spool, [message(f"u{i}@example.com", send_at=T0 + 10_000 - i) for i in range(2000)]
    )
    announced = Announced()
    scheduler = Scheduler(spool, clock=wall, on_ready_queue=announced)
    for meta in metas:
        scheduler.add(meta)
    assert len(scheduler._wakeups) <= 4 * scheduler.statistics().queues + 1025
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        job = await announced.job("example.com")
        assert job.message_id == metas[-1].id
        assert trio.current_time() == pytest.approx(10_000 - 1999, abs=0.01)
        nursery.cancel_scope.cancel()


async def test_a_slow_ready_key_lookup_does_not_hold_up_other_domains(
    spool: Spool, autojump_clock: Any
) -> None:
    """A DNS lookup that hangs for one domain must not stall dispatch for the rest."""
    release = trio.Event()

    async def slow_for_one(domain: str, tenant: str) -> str:
        if domain == "slow.example":
            await release.wait()
        return domain

    announced = Announced()
    async with trio.open_nursery() as nursery:
        scheduler = await start(nursery, spool, on_ready_queue=announced, ready_key=slow_for_one)
        slow, fast = await store(spool, [message("a@slow.example"), message("b@fast.example")])
        scheduler.add(slow)
        scheduler.add(fast)
        job = await announced.job("fast.example")
        assert job.message_id == fast.id
        assert "slow.example" not in announced.queues
        release.set()
        job = await announced.job("slow.example")
        assert job.message_id == slow.id
        nursery.cancel_scope.cancel()
