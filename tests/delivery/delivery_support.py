"""Helpers for the delivery tests: a whole relay core on loopback, and fake MX sinks.

`running_relay` opens a real spool under tmp_path, the real Scheduler, Ingest,
BounceGenerator and DeliveryEngine, wired as the application wires them, and runs
the scheduler and the engine until the block ends (then stops the engine
gracefully).  Fake MX servers are relay.loadgen sinks; `open_sinks` binds several
on different loopback addresses and one common port, as MX hosts all listen on 25.
"""

from __future__ import annotations

import dataclasses
import functools
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from relay.config import Config, DeliveryConfig, EgressSourceConfig, RouteConfig
from relay.config import ServerConfig as RelayServerConfig
from relay.delivery import (
    BounceGenerator,
    DeliveryEngine,
    DeliveryEvent,
    Router,
    destination_policy,
)
from relay.ingest import Ingest
from relay.loadgen import ReceivedMessage, Sink, SinkConfig, open_sink
from relay.model import MessageMeta, RcptStatus
from relay.net.dns import MxResolver
from relay.proto import (
    NEED_DATA,
    ConnectionClosed,
    DataComplete,
    MailFrom,
    ServerConfig,
    ServerConnection,
    StartTLS,
)
from relay.scheduler import Jitter, RetryPolicy, Scheduler
from relay.spool import Spool, open_spool

HOSTNAME = "relay.test"
SENDER = "news@sender.test"
#: Quick retries, no jitter: a deferred recipient is tried again within a second.
RETRY = RetryPolicy(min_backoff=0.3, max_backoff=0.6, jitter=Jitter.NONE)
#: Safety net for waits (never a measure: tests wait for conditions, not for time).
WAIT = 30.0


def content(subject: str = "hello", body: str = "Hello there.\r\n") -> bytes:
    return f"From: <{SENDER}>\r\nTo: <someone@example.test>\r\nSubject: {subject}\r\n\r\n{body}".encode()


def make_config(
    *,
    routes: Sequence[RouteConfig] = (),
    egress: Sequence[EgressSourceConfig] = (),
    pools: dict[str, tuple[str, ...]] | None = None,
    **delivery: Any,
) -> Config:
    """A configuration for tests: short timeouts, the given routes and sources."""
    settings: dict[str, Any] = {
        "connect_timeout": 5.0,
        "command_timeout": 10.0,
        "data_end_timeout": 10.0,
        "idle_session_timeout": 0.5,
        **delivery,
    }
    if pools is not None:
        settings["pools"] = pools
    return Config(
        server=RelayServerConfig(hostname=HOSTNAME),
        delivery=DeliveryConfig(**settings),
        routes=tuple(routes),
        egress=tuple(egress),
    )


def route(domain: str, port: int, host: str = "127.0.0.1", **options: Any) -> RouteConfig:
    return RouteConfig(domain=domain, host=host, port=port, **{"tls": "disabled", **options})


@dataclass
class Relay:
    """The running core of one test."""

    spool: Spool
    scheduler: Scheduler
    engine: DeliveryEngine
    ingest: Ingest
    bounces: BounceGenerator
    router: Router
    events: list[DeliveryEvent] = field(default_factory=list)

    async def send(
        self, recipients: Sequence[str], data: bytes | None = None, **options: Any
    ) -> MessageMeta:
        """Submit one message through ingest (stored, then scheduled)."""
        sender = options.pop("sender", SENDER)
        return await self.ingest.accept(sender, list(recipients), data or content(), **options)

    def meta(self, message_id: str) -> MessageMeta:
        meta = self.spool.get(message_id)
        assert meta is not None
        return meta

    def statuses(self, message_id: str) -> dict[str, RcptStatus]:
        return {r.address: r.status for r in self.meta(message_id).recipients}

    def outcomes(self, recipient: str) -> list[DeliveryEvent]:
        return [e for e in self.events if e.recipient == recipient]

    async def settled(self) -> None:
        """Wait until no outcome is still being written to the spool."""
        await wait_until(lambda: self.engine.statistics().pending_reports == 0)

    async def final(self, *message_ids: str) -> None:
        """Wait until every recipient of these messages is delivered or bounced."""
        await wait_until(lambda: all(self.meta(i).is_final for i in message_ids))


async def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    """Poll `predicate` (cheap) until it holds; AssertionError after `timeout` seconds."""
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.01)
        return
    raise AssertionError(f"condition not met within {timeout:g}s")


@asynccontextmanager
async def running_relay(
    tmp_path: Path,
    config: Config,
    *,
    resolver: MxResolver | None = None,
    mx_port: int = 25,
    retry: RetryPolicy = RETRY,
    shard_count: int = 1,
    sync: bool = False,
) -> AsyncIterator[Relay]:
    """The spool, scheduler, ingest, bounces and delivery engine, running."""
    if resolver is None:  # never asked when routes cover every domain of the test
        resolver = MxResolver(nameservers=["127.0.0.1"], port=9, timeout=1.0)
    async with open_spool(tmp_path / "spool", sync=sync, map_size=1 << 29) as spool:
        router = Router(config, resolver, mx_port=mx_port)
        ingest = Ingest(spool, hostname=HOSTNAME)
        bounces = BounceGenerator(spool, ingest, reporting_mta=HOSTNAME)
        events: list[DeliveryEvent] = []
        engine = DeliveryEngine(config, spool, router, bounces=bounces, on_event=events.append)
        scheduler = Scheduler(
            spool,
            ready_key=router.ready_key,
            on_ready_queue=engine.on_ready_queue,
            bounce_hook=bounces,
            destination=destination_policy(config.delivery, shard_count=shard_count),
            retry=retry,
            max_rcpt_per_txn=config.delivery.max_recipients_per_transaction,
        )
        ingest.set_on_stored(scheduler.add)
        engine.attach(scheduler)
        relay = Relay(spool, scheduler, engine, ingest, bounces, router, events)
        async with trio.open_nursery() as nursery:
            await nursery.start(scheduler.run)
            await nursery.start(engine.run)
            yield relay
            await engine.stop(trio.current_time() + 5.0)
            nursery.cancel_scope.cancel()


def common_port(hosts: Sequence[str]) -> int:
    """A TCP port free on every one of `hosts` right now."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((hosts[0], 0))
            port = int(probe.getsockname()[1])
            free = True
            for host in hosts[1:]:
                with socket.socket() as other:
                    try:
                        other.bind((host, port))
                    except OSError:
                        free = False
                        break
            if free:
                return port
    raise OSError("no port free on every host")


@asynccontextmanager
async def open_sinks(hosts: Sequence[str], **options: Any) -> AsyncIterator[list[Sink]]:
    """Sinks on each of `hosts`, all on one port (as MX hosts all listen on 25)."""
    options.setdefault("record_content", True)
    port = common_port(hosts)
    async with AsyncExitStack() as stack:
        sinks = [
            await stack.enter_async_context(
                open_sink(SinkConfig(host=host, port=port, reuse_port=False, **options))
            )
            for host in hosts
        ]
        yield sinks


@asynccontextmanager
async def open_mx(**options: Any) -> AsyncIterator[Sink]:
    """One sink on 127.0.0.1 recording content."""
    async with open_sinks(["127.0.0.1"], **options) as (sink,):
        yield sink


def received_by(sink: Sink, recipient: str) -> list[ReceivedMessage]:
    return [m for m in sink.records if recipient in m.recipients]


def replace_delivery(config: Config, **changes: Any) -> Config:
    return dataclasses.replace(config, delivery=dataclasses.replace(config.delivery, **changes))


@dataclass
class MiniMx:
    """A bare SMTP server for what the sink does not vary: extensions and broken TLS."""

    port: int = 0
    connections: int = 0
    starttls_accepted: int = 0
    mail: list[MailFrom] = field(default_factory=list)
    messages: list[DataComplete] = field(default_factory=list)


@asynccontextmanager
async def open_mini_mx(
    *, smtputf8: bool = True, eightbitmime: bool = True, broken_starttls: bool = False
) -> AsyncIterator[MiniMx]:
    """A server on 127.0.0.1 accepting everything; with `broken_starttls` it offers
    STARTTLS, answers 220, and hangs up instead of doing the handshake."""
    protocol = ServerConfig(
        hostname="mini.test",
        smtputf8=smtputf8,
        eightbitmime=eightbitmime,
        starttls=broken_starttls,
    )
    mx = MiniMx()

    async def handle(stream: trio.SocketStream) -> None:
        mx.connections += 1
        conn = ServerConnection(protocol)
        conn.send_greeting()
        async with stream:
            while True:
                event = conn.next_event()
                if event is NEED_DATA:
                    await stream.send_all(conn.data_to_send())
                    data = await stream.receive_some(65536)
                    conn.receive_data(bytes(data))
                    continue
                if isinstance(event, ConnectionClosed):
                    await stream.send_all(conn.data_to_send())
                    return
                if isinstance(event, StartTLS):
                    mx.starttls_accepted += 1
                    conn.accept()
                    await stream.send_all(conn.data_to_send())
                    return  # the client's handshake fails
                if isinstance(event, MailFrom):
                    mx.mail.append(event)
                if isinstance(event, DataComplete):
                    mx.messages.append(event)
                conn.accept()

    async with trio.open_nursery() as nursery:
        serve = functools.partial(trio.serve_tcp, handle, 0, host="127.0.0.1")
        listeners = await nursery.start(serve)
        mx.port = listeners[0].socket.getsockname()[1]
        yield mx
        nursery.cancel_scope.cancel()
