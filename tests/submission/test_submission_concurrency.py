"""Many clients at once: every session completes, every message is stored once."""

from __future__ import annotations

import resource
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import trio
from submission_support import (
    CLIENT_NAME,
    PASSWORD,
    USER,
    make_config,
    message,
    running_service,
)

from relay.proto import (
    NEED_DATA,
    AuthReply,
    ClientConnection,
    CommandReply,
    ConnectionClosed,
    Greeting,
    HelloReply,
    ReadyForData,
    ServiceClosing,
    StartTLSReply,
    TransactionComplete,
)

CLIENTS = 1000
SAFETY = 120.0  # for the whole crowd: a net against hanging, not a measure


@dataclass
class Outcome:
    """What one client saw."""

    queued: list[str] = field(default_factory=list)  # the 250 texts
    failures: list[str] = field(default_factory=list)


async def client_session(
    port: int,
    *,
    tls: ssl.SSLContext | None,
    auth: tuple[str, str] | None,
    sender: str,
    recipients: list[str],
    content: bytes,
    messages: int = 1,
) -> Outcome:
    """One SMTP session driven by relay.proto.ClientConnection: STARTTLS and AUTH
    when asked, then `messages` pipelined transactions and QUIT."""
    outcome = Outcome()
    stream: trio.abc.Stream = await trio.open_tcp_stream("127.0.0.1", port)
    conn = ClientConnection(CLIENT_NAME)
    sent = 0
    try:
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                out = conn.data_to_send()
                if out:
                    await stream.send_all(out)
                data = await stream.receive_some(65536)
                conn.receive_data(bytes(data))
            elif isinstance(event, Greeting):
                conn.send_ehlo()
            elif isinstance(event, HelloReply):
                if tls is not None and not conn.tls_active:
                    conn.send_starttls()
                elif auth is not None and not conn.authenticated:
                    conn.send_auth_plain(*auth)
                else:
                    conn.send_mail(sender, recipients, size=len(content))
            elif isinstance(event, StartTLSReply):
                assert tls is not None and event.reply.code == 220, event
                await stream.send_all(conn.data_to_send())
                ssl_stream = trio.SSLStream(stream, tls, server_hostname="127.0.0.1")
                await ssl_stream.do_handshake()
                stream = ssl_stream
                conn.tls_established()
                conn.send_ehlo()
            elif isinstance(event, AuthReply):
                assert event.reply.code == 235, event
                conn.send_mail(sender, recipients, size=len(content))
            elif isinstance(event, ReadyForData):
                conn.send_data(content)
            elif isinstance(event, TransactionComplete):
                final = event.result.final
                if event.result.delivered and final is not None:
                    outcome.queued.append(final.text)
                else:
                    outcome.failures.append(str(event.result.outcome()))
                sent += 1
                if sent < messages:
                    conn.send_mail(sender, recipients, size=len(content))
                else:
                    conn.send_quit()
            elif isinstance(event, CommandReply):
                await stream.send_all(conn.data_to_send())
            elif isinstance(event, ServiceClosing | ConnectionClosed):
                return outcome
    finally:
        await trio.aclose_forcefully(stream)


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def test_thousand_concurrent_clients_all_complete(tmp_path: Path) -> None:
    raise_fd_limit(4 * CLIENTS + 256)
    config = make_config(
        submission={"max_connections": 2 * CLIENTS, "max_connections_per_ip": 2 * CLIENTS}
    )
    async with running_service(tmp_path, config, sync=True) as harness:
        outcomes: list[Outcome] = []
        tls = harness.client_context()
        start = trio.Event()

        async def one(i: int) -> None:
            await start.wait()
            if i % 2:
                outcome = await client_session(
                    harness.submission_port,
                    tls=tls,
                    auth=(USER, PASSWORD),
                    sender="news@acme.test",
                    recipients=[f"user{i}@dest{i % 13}.example"],
                    content=message(subject=f"tls {i}"),
                )
            else:
                outcome = await client_session(
                    harness.relay_port,
                    tls=None,
                    auth=None,
                    sender="alerts@internal.example",
                    recipients=[f"user{i}@dest{i % 13}.example", f"copy{i}@dest.example"],
                    content=message(sender="alerts@internal.example", subject=f"plain {i}"),
                )
            outcomes.append(outcome)

        with trio.fail_after(SAFETY):
            async with trio.open_nursery() as nursery:
                for i in range(CLIENTS):
                    nursery.start_soon(one, i)
                await trio.sleep(0)
                start.set()
        assert [o.failures for o in outcomes if o.failures] == []
        assert sum(len(o.queued) for o in outcomes) == CLIENTS
        stats = harness.service.statistics()
        assert stats.messages == CLIENTS and stats.sessions == CLIENTS
        assert harness.spool.count_queued() == CLIENTS
        assert harness.service.budget.used == 0
        connections = harness.service.connection_statistics()
        assert connections is not None and connections.refused == 0


async def test_one_session_many_messages_pipelined(tmp_path: Path) -> None:
    async with running_service(tmp_path) as harness:
        outcome = await client_session(
            harness.submission_port,
            tls=harness.client_context(),
            auth=(USER, PASSWORD),
            sender="news@acme.test",
            recipients=[f"r{i}@example.net" for i in range(10)],
            content=message(body="x" * 70 + "\r\n"),
            messages=50,
        )
        assert outcome.failures == [] and len(outcome.queued) == 50
        queued = {m.id for m in harness.spool.iter_queued()}
        assert {text.split()[-1] for text in outcome.queued} == queued
