"""Webhooks end to end: a receiver on loopback that is down, a restart, then up."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, cast

import trio
from api_support import api_config, client, new_key, running_shard, wait_until
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from hypercorn.typing import ASGIFramework
from jsonschema import Draft202012Validator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from relay.api.openapi import openapi_document
from relay.config import DeliveryConfig, RouteConfig, SpoolConfig, WebhookConfig
from relay.events import SIGNATURE_HEADER, verify_signature
from relay.loadgen import Faults, SinkConfig, open_sink

SECRET = "whsec-0123456789abcdef"
EVENT_SCHEMA = {"$ref": "#/components/schemas/Event", **openapi_document()}


def reserve_port() -> socket.socket:
    """A bound TCP socket that does not listen: connections to it are refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class Receiver:
    """Collects webhook POSTs (headers and raw body)."""

    def __init__(self) -> None:
        self.posts: list[tuple[dict[str, str], bytes]] = []

    async def hook(self, request: Request) -> Response:
        self.posts.append((dict(request.headers), await request.body()))
        return Response(status_code=204)

    @property
    def events(self) -> list[dict[str, Any]]:
        return [event for _headers, body in self.posts for event in json.loads(body)]


@asynccontextmanager
async def receiving(sock: socket.socket, receiver: Receiver) -> AsyncIterator[None]:
    """Start answering on the reserved socket."""
    sock.listen(16)
    config = HypercornConfig()
    config.bind = [f"fd://{os.dup(sock.fileno())}"]
    config.accesslog = None
    app = Starlette(routes=[Route("/hook", receiver.hook, methods=["POST"])])
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            partial(serve, cast(ASGIFramework, app), config, shutdown_trigger=stop.wait)
        )
        try:
            yield
        finally:
            stop.set()


def hook_config(port: int, **events: Any) -> WebhookConfig:
    return WebhookConfig(url=f"http://127.0.0.1:{port}/hook", secret=SECRET, **events)


FAST = {
    "webhook_retry_min": 0.05,
    "webhook_retry_max": 0.2,
    "webhook_flush_interval": 0.05,
    "webhook_batch_size": 3,
}


def check_posts(receiver: Receiver) -> list[dict[str, Any]]:
    """Every POST signed, every event once and as documented."""
    for headers, body in receiver.posts:
        assert headers["content-type"] == "application/json"
        assert verify_signature(SECRET, headers[SIGNATURE_HEADER.lower()], body)
        assert not verify_signature(SECRET, headers[SIGNATURE_HEADER.lower()], body + b" ")
        assert len(json.loads(body)) <= 3  # webhook_batch_size
    events = receiver.events
    for event in events:
        Draft202012Validator(EVENT_SCHEMA).validate(event)
    assert len({e["id"] for e in events}) == len(events), "an event arrived twice"
    return events


async def test_down_receiver_and_a_restart_lose_nothing(tmp_path: Path) -> None:
    port_socket = reserve_port()
    port = port_socket.getsockname()[1]
    receiver = Receiver()
    faults = Faults(recipients={"nobody@example.test": (550, "5.1.1", "No such user")})
    async with open_sink(SinkConfig(host="127.0.0.1", port=0, faults=faults)) as sink:
        cfg = api_config(tmp_path, sink.port, webhooks=(hook_config(port),), **FAST)
        async with running_shard(cfg) as shard:
            token = await new_key(shard, rate=2)
            async with client(shard, token) as c:
                common = {"from": "news@shop.test", "text": "t", "tags": ["spring"]}
                for rcpt in ("ann@example.test", "nobody@example.test", "zed@example.test"):
                    doc = {**common, "to": rcpt, "metadata": {"who": rcpt}}
                    await c.post("/v1/messages", json=doc)  # the third is over the rate: 429
            # delivered, bounced, and the DSN for the bounce delivered too
            await wait_until(
                lambda: shard.spool.count_queued() == 0 and sink.statistics().messages == 2
            )
            assert shard.webhooks is not None
            sender = shard.webhooks.senders[0]
            await wait_until(lambda: sender.statistics.failures >= 2)  # refused, retried
            published = dict(shard.events.counts) if shard.events else {}
        assert shard.webhooks.queue.statistics.committed == 7  # all in the queue at the stop
        assert published == {
            "accepted": 3,  # ann, nobody, the DSN to news@shop.test
            "delivered": 2,
            "deferred": 0,
            "bounced": 1,
            "expired": 0,
            "rejected": 1,
        }
        # the queue survived the restart; the receiver is up now
        async with receiving(port_socket, receiver), running_shard(cfg) as shard:
            await wait_until(lambda: len(receiver.events) >= 7)
            webhooks = shard.webhooks
            assert webhooks is not None
            endpoint = webhooks.senders[0].endpoint
            await wait_until(lambda: webhooks.queue.records == {endpoint.id: 0})
    port_socket.close()
    events = check_posts(receiver)
    assert sorted((e["event"], e["recipient"]) for e in events) == [
        ("accepted", "ann@example.test"),
        ("accepted", "news@shop.test"),
        ("accepted", "nobody@example.test"),
        ("bounced", "nobody@example.test"),
        ("delivered", "ann@example.test"),
        ("delivered", "news@shop.test"),
        ("rejected", "zed@example.test"),
    ]
    by_kind = {(e["event"], e["recipient"]): e for e in events}
    delivered = by_kind[("delivered", "ann@example.test")]
    assert delivered["tags"] == ["spring"]
    assert delivered["metadata"] == {"who": "ann@example.test"}
    assert delivered["reply"].startswith("250 ")
    assert delivered["mx"] == f"127.0.0.1:{sink.port}"
    assert delivered["tenant"] == "shop"
    assert delivered["message_id"] == by_kind[("accepted", "ann@example.test")]["message_id"]
    bounced = by_kind[("bounced", "nobody@example.test")]
    assert bounced["reply"].startswith("550 5.1.1")
    assert bounced["metadata"] == {"who": "nobody@example.test"}
    rejected = by_kind[("rejected", "zed@example.test")]
    assert rejected["message_id"] is None
    assert rejected["reply"].startswith("450 4.7.1")
    assert rejected["metadata"] == {"who": "zed@example.test"}
    assert by_kind[("accepted", "news@shop.test")]["tags"] == ["dsn"]
    # per endpoint, in the order they happened
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)


async def test_deferred_then_expired_and_event_filters(tmp_path: Path) -> None:
    down = reserve_port()  # the destination of slow.test refuses connections
    port_socket = reserve_port()
    port = port_socket.getsockname()[1]
    receiver = Receiver()
    async with open_sink(SinkConfig(host="127.0.0.1", port=0)) as sink:
        cfg = api_config(
            tmp_path,
            sink.port,
            webhooks=(hook_config(port, events=("deferred", "expired")),),
            **FAST,
        )
        cfg = dataclasses.replace(
            cfg,
            spool=SpoolConfig(max_age=2.0),
            delivery=DeliveryConfig(nameservers=("127.0.0.1",), retry_min=0.5, retry_max=0.5),
            routes=(
                RouteConfig(
                    domain="slow.test", host="127.0.0.1", port=down.getsockname()[1], tls="disabled"
                ),
                *cfg.routes,
            ),
        )
        async with receiving(port_socket, receiver), running_shard(cfg) as shard:
            token = await new_key(shard)
            async with client(shard, token) as c:
                doc = {"from": "news@shop.test", "to": "late@slow.test", "text": "t", "tags": ["x"]}
                assert (await c.post("/v1/messages", json=doc)).status_code == 202
            await wait_until(lambda: any(e["event"] == "expired" for e in receiver.events))
    down.close()
    port_socket.close()
    events = check_posts(receiver)
    kinds = [e["event"] for e in events]
    assert set(kinds) == {"deferred", "expired"}  # the endpoint asked for these only
    assert kinds[-1] == "expired"
    expired = events[-1]
    assert expired["recipient"] == "late@slow.test"
    assert expired["reply"].split()[1] == "4.4.7"  # RFC 3463: delivery time expired
    assert expired["tags"] == ["x"]
