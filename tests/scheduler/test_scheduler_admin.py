"""relay.scheduler.admin against a real spool, in-process and as another process would."""

from __future__ import annotations

import random
from typing import Any

import pytest
import trio
import trio.testing
from scheduler_support import T0, frozen, message, store, wall

from relay.model import MessageMeta, RcptStatus, Recipient, RecipientResult
from relay.scheduler import MessageFilter, ReadyQueue, Scheduler, admin, control
from relay.spool import Spool

DELIVERED, DEFERRED, BOUNCED = RcptStatus.DELIVERED, RcptStatus.DEFERRED, RcptStatus.BOUNCED


class Hook:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    async def __call__(self, meta: MessageMeta, recipients: Any) -> None:
        self.calls.append((meta.id, [r.address for r in recipients]))


async def start(nursery: trio.Nursery, spool: Spool, **kwargs: Any) -> Scheduler:
    scheduler = Scheduler(spool, clock=wall, rng=random.Random(3), **kwargs)
    await nursery.start(scheduler.run)
    return scheduler


async def defer(spool: Spool, meta: MessageMeta, until: float) -> None:
    results = [RecipientResult(r.address, DEFERRED, "450 4.2.0 busy") for r in meta.recipients]
    with frozen():
        await spool.record_results(meta.id, results, next_attempt=until)


# --- filters -------------------------------------------------------------------------------


async def test_filters_select_by_every_field(spool: Spool) -> None:
    a, b, c = await store(
        spool,
        [
            message("x@one.example", tenant="t1", campaign="c1", sender="s@acme.example"),
            message("y@two.example", "z@one.example", tenant="t2", campaign="c2"),
            message("w@three.example", tenant="t1", campaign="c2", sender="S@Other.example"),
        ],
    )
    now = wall()

    def ids(selection: MessageFilter, at: float = now) -> set[str]:
        return {m.id for m in selection.select(spool, at)}

    assert ids(MessageFilter()) == {a.id, b.id, c.id}
    assert ids(MessageFilter(domain="ONE.example")) == {a.id, b.id}
    assert ids(MessageFilter(tenant="t1")) == {a.id, c.id}
    assert ids(MessageFilter(campaign="c2", tenant="t1")) == {c.id}
    assert ids(MessageFilter(sender="s@ACME.example")) == {a.id}
    assert ids(MessageFilter(sender="@other.example")) == {c.id}
    assert ids(MessageFilter(ids=(b.id, "nonexistent"))) == {b.id}
    assert ids(MessageFilter(older_than=60)) == set()
    assert ids(MessageFilter(older_than=60), now + 61) == {a.id, b.id, c.id}
    assert [r.address for r in MessageFilter(domain="one.example").recipients(b)] == [
        "z@one.example"
    ]
    assert MessageFilter().is_empty() and not MessageFilter(tenant="t1").is_empty()


# --- summary and inspect -----------------------------------------------------------------------


async def test_summary_counts_by_state_domain_and_tenant(spool: Spool) -> None:
    start_time = wall()
    metas = await store(
        spool,
        [
            message("a@one.example", tenant="t1"),
            message("b@one.example", "c@two.example", tenant="t1"),
            message("d@two.example", tenant="t2", send_at=start_time + 3600),
            message("e@held.example", tenant="t2"),
        ],
    )
    await defer(spool, metas[0], start_time + 600)
    with frozen():
        await spool.record_results(
            metas[1].id, [RecipientResult("c@two.example", DELIVERED, "250 ok")], next_attempt=None
        )
        await admin.suspend(spool, "domain", "held.example", reason="blocklisted", now=wall())

    report = admin.summary(spool, now=wall())
    assert report.messages == 4 and report.recipients == 4
    assert report.by_state == {
        "pending": 1,
        "deferred": 1,
        "scheduled": 1,
        "suspended": 1,
        "expired": 0,
    }
    assert report.by_domain["one.example"].messages == 2
    assert report.by_domain["one.example"].deferred == 1
    assert report.by_domain["two.example"].scheduled == 1
    assert report.by_domain["two.example"].messages == 1  # c@two.example was delivered
    assert report.by_tenant["t1"].messages == 2 and report.by_tenant["t1"].recipients == 2
    assert report.by_tenant["t2"].suspended == 1
    assert report.oldest == pytest.approx(start_time, abs=1)
    [suspension] = report.suspensions
    assert (suspension.kind, suspension.name, suspension.reason) == (
        "domain",
        "held.example",
        "blocklisted",
    )
    assert admin.summary(spool, now=wall() + 6 * 86400).by_state["expired"] == 3


async def test_inspect_shows_recipients_and_history(spool: Spool) -> None:
    start_time = wall()
    [meta] = await store(spool, [message("a@one.example", "b@one.example")])
    await defer(spool, meta, start_time + 600)
    shown = admin.inspect(spool, meta.id)
    assert shown is not None
    assert [r.status for r in shown.recipients] == [DEFERRED, DEFERRED]
    assert shown.attempts == 1 and shown.next_attempt == start_time + 600
    assert admin.inspect(spool, "01HZZZZZZZZZZZZZZZZZZZZZZZ") is None


# --- suspensions ----------------------------------------------------------------------------


async def test_suspensions_are_persisted_in_the_spool(spool: Spool) -> None:
    with frozen():
        first = await admin.suspend(spool, "domain", "Example.COM", reason="r", now=T0)
        await admin.suspend(spool, "tenant", "Acme", duration=60.0, now=T0)
    assert first.name == "example.com"
    stored = {(s.kind, s.name): s for s in control.read_suspensions(spool)}
    assert stored[("domain", "example.com")].reason == "r"
    assert stored[("tenant", "Acme")].until == T0 + 60.0
    assert len(admin.list_suspensions(spool, now=T0 + 30)) == 2
    assert [s.name for s in admin.list_suspensions(spool, now=T0 + 61)] == ["example.com"]
    with frozen():
        assert await admin.resume(spool, "domain", "example.com")
        assert not await admin.resume(spool, "domain", "example.com")
    with pytest.raises(ValueError):
        control.normalise("campaign", "x")  # type: ignore[arg-type]


# --- retry now ------------------------------------------------------------------------------


async def test_retry_now_in_process(spool: Spool, autojump_clock: Any) -> None:
    ready: dict[object, ReadyQueue] = {}
    async with trio.open_nursery() as nursery:
        scheduler = await start(nursery, spool, on_ready_queue=lambda q: ready.update({q.key: q}))
        [meta] = await store(spool, [message("a@example.com", send_at=T0 + 86400)])
        scheduler.add(meta)
        await trio.sleep(10)
        with frozen():
            ids = await admin.retry_now(
                spool, MessageFilter(domain="example.com"), scheduler=scheduler, now=wall()
            )
        assert ids == [meta.id]
        await trio.testing.wait_all_tasks_blocked()
        job = ready["example.com"].get_nowait()
        assert job.message_id == meta.id and trio.current_time() < 11
        nursery.cancel_scope.cancel()


async def test_retry_now_from_another_process_goes_through_a_request(
    spool: Spool, autojump_clock: Any
) -> None:
    ready: dict[object, ReadyQueue] = {}
    async with trio.open_nursery() as nursery:
        scheduler = await start(
            nursery,
            spool,
            on_ready_queue=lambda q: ready.update({q.key: q}),
            refresh_interval=5.0,
        )
        metas = await store(
            spool, [message(f"u{i}@example.com", send_at=T0 + 86400) for i in range(3)]
        )
        for meta in metas:
            scheduler.add(meta)
        await trio.sleep(1)
        with frozen():
            ids = await admin.retry_now(spool, MessageFilter(ids=(metas[1].id,)), now=wall())
        assert ids == [metas[1].id]
        assert len(control.read_requests(spool)) == 1
        stored = spool.get(metas[1].id)
        assert stored is not None and stored.next_attempt == pytest.approx(wall())
        with frozen():
            await scheduler.process_requests()  # what the control task does every 5 s
        assert control.read_requests(spool) == []
        await trio.testing.wait_all_tasks_blocked()
        job = ready["example.com"].get_nowait()
        assert job.message_id == metas[1].id
        assert scheduler.statistics().scheduled == 2  # no duplicate entry left behind
        nursery.cancel_scope.cancel()


# --- delete -------------------------------------------------------------------------------------


async def test_delete_by_campaign(spool: Spool, autojump_clock: Any) -> None:
    ready: dict[object, ReadyQueue] = {}
    async with trio.open_nursery() as nursery:
        scheduler = await start(nursery, spool, on_ready_queue=lambda q: ready.update({q.key: q}))
        metas = await store(
            spool,
            [message(f"u{i}@example.com", campaign="spam", send_at=T0 + 60) for i in range(4)]
            + [message("keep@example.com", campaign="good", send_at=T0 + 60)],
        )
        for meta in metas:
            scheduler.add(meta)
        with pytest.raises(ValueError):
            await admin.delete(spool, MessageFilter())
        with frozen():
            assert await admin.delete(spool, MessageFilter(campaign="spam")) == 4
        assert spool.count_queued() == 1
        await trio.sleep(61)
        jobs = []
        while True:
            try:
                jobs.append(ready["example.com"].get_nowait())
            except trio.WouldBlock:
                break
        assert [job.recipients for job in jobs] == [("keep@example.com",)]
        nursery.cancel_scope.cancel()


# --- bounce ------------------------------------------------------------------------------------


async def test_bounce_by_domain_in_process_runs_the_hook(spool: Spool, autojump_clock: Any) -> None:
    hook = Hook()
    async with trio.open_nursery() as nursery:
        scheduler = await start(nursery, spool, bounce_hook=hook)
        [meta] = await store(
            spool, [message("a@dead.example", "b@live.example", send_at=T0 + 3600)]
        )
        scheduler.add(meta)
        with frozen():
            count = await admin.bounce(
                spool,
                MessageFilter(domain="dead.example"),
                reason="domain gone",
                scheduler=scheduler,
            )
        assert count == 1
        assert hook.calls == [(meta.id, ["a@dead.example"])]
        stored = spool.get(meta.id)
        assert stored is not None
        assert stored.recipients[0] == Recipient(
            "a@dead.example", BOUNCED, admin.ADMIN_BOUNCE_REPLY + ": domain gone", 1
        )
        assert stored.recipients[1].status is RcptStatus.PENDING
        nursery.cancel_scope.cancel()


async def test_bounce_from_another_process_has_the_scheduler_run_the_hook(spool: Spool) -> None:
    metas = await store(spool, [message("a@x.example", tenant="t9"), message("b@x.example")])
    with frozen():
        count = await admin.bounce(spool, MessageFilter(tenant="t9"), now=wall())
    assert count == 1
    [request] = control.read_requests(spool)
    assert request.op == "bounced" and request.ids == (metas[0].id,)
    assert request.recipients == (("a@x.example",),)

    hook = Hook()
    scheduler = Scheduler(spool, clock=wall, bounce_hook=hook)
    with frozen():
        assert await scheduler.process_requests() == 1
    assert hook.calls == [(metas[0].id, ["a@x.example"])]
    assert control.read_requests(spool) == []
    with pytest.raises(ValueError):
        await admin.bounce(spool, MessageFilter())


async def test_malformed_requests_are_dropped(spool: Spool) -> None:
    with frozen():
        await spool.aux(control.CONTROL).put(control.REQUEST_PREFIX + b"junk", {"op": "explode"})
        await spool.aux(control.CONTROL).put(control.REQUEST_PREFIX + b"junk2", [1, 2])
    scheduler = Scheduler(spool, clock=wall)
    with frozen():
        assert await scheduler.process_requests() == 2
    assert control.read_requests(spool) == []
