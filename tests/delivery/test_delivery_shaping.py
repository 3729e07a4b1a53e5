"""Shaping per site: limits split among shards, rates, concurrency feedback, TLS memory."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from delivery_support import make_config, open_mx, route, running_relay, wait_until

from relay.config import DeliveryConfig
from relay.delivery import RouteSite, site_policy
from relay.delivery.shaping import retry_policy, share
from relay.delivery.tls import TlsFailureMemory
from relay.model import RcptStatus


def test_limits_are_divided_among_shards_exactly() -> None:
    assert [share(20, 3, i) for i in range(3)] == [7, 7, 6]
    assert [share(2, 4, i) for i in range(4)] == [1, 1, 1, 1]  # never below one
    assert share(20, 1) == 20
    with pytest.raises(ValueError):
        share(20, 2, 2)


def test_site_policy_from_the_configuration() -> None:
    delivery = DeliveryConfig(
        max_sessions_per_site=20,
        initial_sessions_per_site=4,
        message_rate_per_site=100.0,
        connection_rate_per_site=10.0,
    )
    policy = site_policy(delivery, shard_count=2, shard_index=1)
    assert (policy.feedback.initial, policy.feedback.maximum) == (2, 10)
    assert policy.messages_per_second == 50.0
    assert policy.connections_per_second == 5.0
    assert policy.burst == 5.0
    unlimited = site_policy(DeliveryConfig())
    assert math.isinf(unlimited.messages_per_second)
    assert math.isinf(unlimited.connections_per_second)
    assert retry_policy(DeliveryConfig(retry_min=60, retry_max=600)).max_backoff == 600


def test_tls_failure_memory_forgets_after_its_duration() -> None:
    now = [100.0]
    memory = TlsFailureMemory(3600.0, clock=lambda: now[0])
    memory.remember("mx.example", 25)
    assert memory.failed_recently("mx.example", 25)
    assert not memory.failed_recently("mx.example", 587)
    now[0] += 3599.0
    assert memory.failed_recently("mx.example", 25)
    now[0] += 1.0
    assert not memory.failed_recently("mx.example", 25)
    assert len(memory) == 0


async def test_message_rate_per_site(tmp_path: Path) -> None:
    async with open_mx() as sink:
        # 10 messages/s, a burst of 10: the 20th starts 1 s after the 1st at the earliest.
        config = make_config(routes=[route("*", sink.port)], message_rate_per_site=10.0)
        async with running_relay(tmp_path, config) as relay:
            metas = [await relay.send([f"user{i}@dest.test"]) for i in range(20)]
            await relay.final(*(m.id for m in metas))
        arrivals = sorted(m.arrival for m in sink.records)
        assert arrivals[-1] - arrivals[0] >= 0.7  # a lower bound only: slow is fine


async def test_connection_rate_per_site(tmp_path: Path) -> None:
    async with open_mx() as sink:
        # One message per connection, 5 connections/s with a burst of 5: the 10th
        # connection comes 1 s after the 1st at the earliest.
        config = make_config(
            routes=[route("*", sink.port)],
            connection_rate_per_site=5.0,
            max_messages_per_connection=1,
        )
        async with running_relay(tmp_path, config) as relay:
            metas = [await relay.send([f"user{i}@dest.test"]) for i in range(10)]
            await relay.final(*(m.id for m in metas))
        stats = sink.statistics()
        assert stats.connections == 10
        arrivals = sorted(m.arrival for m in sink.records)
        assert arrivals[-1] - arrivals[0] >= 0.7


async def test_refused_connection_defers_and_shrinks_the_window(tmp_path: Path) -> None:
    async with open_mx() as sink:
        port = sink.port
    # Nothing listens on that port any more: every connection is refused.
    config = make_config(
        routes=[route("*", port)], initial_sessions_per_site=4, max_sessions_per_site=8
    )
    async with running_relay(tmp_path, config) as relay:
        meta = await relay.send(["someone@dest.test"])
        await wait_until(lambda: bool(relay.outcomes("someone@dest.test")))
        await relay.settled()
        [outcome] = relay.outcomes("someone@dest.test")
        [ready] = relay.scheduler.ready_queues.values()
        assert outcome.status is RcptStatus.DEFERRED
        assert outcome.reply.startswith("451 4.4.1")
        assert "refused" in outcome.reply.lower()
        assert relay.statuses(meta.id) == {"someone@dest.test": RcptStatus.DEFERRED}
        assert ready.key.site == RouteSite("127.0.0.1", port, ready.key.site.tls)
        assert ready.feedback.window == 2  # halved at once
