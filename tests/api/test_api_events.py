"""The event hub, the durable webhook queue and the signature scheme (no HTTP)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from relay.config import WebhookConfig
from relay.events import (
    Endpoint,
    Event,
    EventHub,
    WebhookQueue,
    signature_header,
    verify_signature,
)
from relay.events.webhooks import WebhookSender
from relay.model import MessageMeta, RcptStatus, Recipient
from relay.spool import open_spool


def meta(message_id: str = "01ARZ3NDEKTSV4RRFFQ69G5FAV", reply: str = "") -> MessageMeta:
    return MessageMeta(
        id=message_id,
        sender="s@shop.test",
        recipients=(Recipient("a@x.test", RcptStatus.BOUNCED, reply, 2), Recipient("b@x.test")),
        created=1.0,
        expires=2.0,
        next_attempt=1.0,
        size=10,
        tenant="shop",
        tags=("t",),
        metadata={"k": "v"},
    )


class Outcome:
    def __init__(self, status: RcptStatus, message_id: str = "01ARZ3NDEKTSV4RRFFQ69G5FAV") -> None:
        self.message_id = message_id
        self.recipient = "a@x.test"
        self.status = status
        self.reply = "250 ok" if status is RcptStatus.DELIVERED else "451 later"
        self.mx = "mx.x.test"
        self.attempt = 3


def test_signatures_verify_and_refuse_tampering_and_replays() -> None:
    body = b'[{"id":"1"}]'
    header = signature_header("secret-secret-secret", 1_700_000_000, body)
    assert header.startswith("t=1700000000,v1=")
    assert verify_signature("secret-secret-secret", header, body, now=1_700_000_100)
    assert not verify_signature("secret-secret-secret", header, body + b" ", now=1_700_000_100)
    assert not verify_signature("other-secret-secret", header, body, now=1_700_000_100)
    assert not verify_signature("secret-secret-secret", header, body, now=1_700_001_000)  # old
    rotated = header + ",v1=" + "0" * 64
    assert verify_signature("secret-secret-secret", rotated, body, now=1_700_000_000)
    assert not verify_signature("secret-secret-secret", "v1=abc", body)


def test_hub_vocabulary_and_context() -> None:
    looked_up: list[str] = []

    def lookup(message_id: str) -> MessageMeta | None:
        looked_up.append(message_id)
        return meta(message_id)

    hub = EventHub(lookup, log_events="none", clock=lambda: 5.0)
    seen: list[Event] = []
    hub.subscribe(seen.append)
    hub.subscribe(lambda event: 1 / 0)  # a failing subscriber harms nobody
    hub.outcome(Outcome(RcptStatus.DELIVERED))  # not cached: read from the spool
    hub.outcome(Outcome(RcptStatus.DEFERRED))  # cached now
    hub.outcome(Outcome(RcptStatus.BOUNCED))  # left to the bounce hook
    bounced = meta(reply="550 5.1.1 no such user")
    hub.bounced(bounced, bounced.recipients[:1])
    expired = meta(reply="451 4.4.7 Delivery time expired")
    hub.bounced(expired, expired.recipients[:1])
    hub.accepted(meta("01ARZ3NDEKTSV4RRFFQ69G5FAW"))
    hub.rejected(["r@x.test"], "450 4.7.1 slow down", sender="s@shop.test", tenant="shop")
    assert [e.event for e in seen] == [
        "delivered",
        "deferred",
        "bounced",
        "expired",
        "accepted",
        "accepted",
        "rejected",
    ]
    assert looked_up == ["01ARZ3NDEKTSV4RRFFQ69G5FAV"]
    assert seen[0].tags == ("t",) and seen[0].metadata == {"k": "v"}
    assert seen[0].mx == "mx.x.test" and seen[0].attempt == 3
    assert seen[2].reply == "550 5.1.1 no such user"
    assert seen[-1].message_id is None
    assert hub.counts == {
        "accepted": 2,
        "delivered": 1,
        "deferred": 1,
        "bounced": 1,
        "expired": 1,
        "rejected": 1,
    }
    assert len({e.id for e in seen}) == len(seen)


def test_without_webhooks_events_are_only_counted() -> None:
    def lookup(message_id: str) -> MessageMeta | None:
        raise AssertionError("no spool read for an event nobody wants")

    hub = EventHub(lookup, log_events="none")
    hub.accepted(meta())
    hub.outcome(Outcome(RcptStatus.DELIVERED))
    assert (hub.counts["accepted"], hub.counts["delivered"]) == (2, 1)


def event(name: str, n: int) -> Event:
    return Event(id=f"{n:026d}", event=name, timestamp=float(n), message_id="m", recipient=f"r{n}")  # type: ignore[arg-type]


async def test_queue_commits_per_endpoint_in_order_and_survives_reopening(tmp_path: Path) -> None:
    all_events = Endpoint.of(WebhookConfig(url="https://u:p@a.test/hook?x=1", secret="s" * 16))
    bounces = Endpoint.of(
        WebhookConfig(url="https://b.test/hook", secret="s" * 16, events=("bounced",))
    )
    assert all_events.label == "https://a.test/hook"  # no credentials in logs or metrics
    async with open_spool(tmp_path / "spool", map_size=1 << 26, sync=False) as spool:
        table = spool.aux("webhooks")
        queue = WebhookQueue(table, [all_events, bounces], batch_size=2, flush_interval=0.01)
        for n in range(5):
            queue(event("delivered" if n % 2 else "bounced", n))
        assert queue.statistics.buffered == 5
        assert await queue.flush()
        assert queue.records == {all_events.id: 3, bounces.id: 2}
        head = queue.head(all_events, max_events=4)
        assert [e["recipient"] for b in head for e in b.events] == ["r0", "r1", "r2", "r3"]
        assert [e["recipient"] for b in queue.head(bounces, 10) for e in b.events] == [
            "r0",
            "r2",
            "r4",
        ]
        await queue.remove(all_events, head)
        reopened = WebhookQueue(table, [all_events, bounces], batch_size=2, flush_interval=0.01)
        assert reopened.records == {all_events.id: 1, bounces.id: 2}
        assert [e["recipient"] for b in reopened.head(all_events, 10) for e in b.events] == ["r4"]


async def test_queue_buffer_is_bounded(tmp_path: Path) -> None:
    endpoint = Endpoint.of(WebhookConfig(url="https://a.test/", secret="s" * 16))
    async with open_spool(tmp_path / "spool", map_size=1 << 26, sync=False) as spool:
        queue = WebhookQueue(
            spool.aux("webhooks"), [endpoint], batch_size=10, flush_interval=0.01, max_buffered=3
        )
        for n in range(5):
            queue(event("accepted", n))
        assert (queue.statistics.buffered, queue.statistics.dropped) == (3, 2)


async def test_sender_gives_up_on_batches_past_retention(tmp_path: Path) -> None:
    endpoint = Endpoint.of(WebhookConfig(url="http://127.0.0.1:9/", secret="s" * 16))
    now = [1000.0]
    async with open_spool(tmp_path / "spool", map_size=1 << 26, sync=False) as spool:
        queue = WebhookQueue(
            spool.aux("webhooks"),
            [endpoint],
            batch_size=10,
            flush_interval=0.01,
            clock=lambda: now[0],
        )
        queue(event("accepted", 1))
        await queue.flush()
        now[0] += 100.0
        sender = WebhookSender(
            queue,
            endpoint,
            client=None,  # type: ignore[arg-type]  # never reached: nothing left to post
            batch_size=10,
            retry_min=1.0,
            retry_max=2.0,
            retention=50.0,
            clock=lambda: now[0],
        )
        assert await sender._drop_expired(queue.head(endpoint, 10)) == []
        assert sender.statistics.expired == 1
        assert queue.records[endpoint.id] == 0


@pytest.mark.parametrize("failures", [1, 3, 20])
def test_backoff_stays_within_bounds(failures: int) -> None:
    endpoint = Endpoint.of(WebhookConfig(url="http://127.0.0.1:9/", secret="s" * 16))
    sender = WebhookSender(
        None,  # type: ignore[arg-type]
        endpoint,
        None,  # type: ignore[arg-type]
        batch_size=1,
        retry_min=1.0,
        retry_max=30.0,
        retention=1.0,
        clock=time.time,
    )
    sender.statistics.consecutive_failures = failures
    ceiling = min(30.0, 2.0 ** (failures - 1))
    for _ in range(50):
        assert 1.0 <= sender._backoff() <= max(ceiling, 1.0)
