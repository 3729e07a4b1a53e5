"""Test helpers: a client and a server talking in memory, and reply parsing.

`converse` shuttles bytes between a ClientConnection and a ServerConnection in a
loop (no sockets, no clocks).  Every `data_to_send()` chunk is recorded, so tests
can count writes (one write per pipelined group).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from relay.fastparse import ReplyReader
from relay.proto import (
    NEED_DATA,
    ClientConnection,
    ClientEvent,
    ConnectionClosed,
    DataComplete,
    Greeting,
    HelloReply,
    RcptTo,
    ReadyForData,
    Reply,
    ServerConnection,
    ServerEvent,
    StartTLS,
    TransactionComplete,
)

Policy = Callable[[ServerConnection, ServerEvent], None]
Script = Callable[[ClientConnection, ClientEvent], None]


def accept_all(conn: ServerConnection, event: ServerEvent) -> None:
    """Accept every event (the TLS handshake "succeeds" at once)."""
    conn.accept()
    if isinstance(event, StartTLS):
        conn.tls_established()


def reject_rcpt_containing(marker: str) -> Policy:
    """Accept everything but recipients containing `marker` (550 5.1.1)."""

    def policy(conn: ServerConnection, event: ServerEvent) -> None:
        if isinstance(event, RcptTo) and marker in event.recipient:
            conn.send_reply(550, "5.1.1", f"No such user {event.recipient}")
        elif isinstance(event, DataComplete):
            conn.accept(f"queued {len(event.content)} octets")
        else:
            accept_all(conn, event)

    return policy


def parse_replies(data: bytes) -> list[Reply]:
    """Every complete reply in `data`."""
    reader = ReplyReader()
    reader.feed(data)
    out = []
    while (parsed := reader.next_reply()) is not None:
        code, enhanced, texts = parsed
        out.append(Reply(code, enhanced, tuple(texts)))
    assert reader.take_buffer() == b"", "incomplete reply"
    return out


@dataclass
class Transcript:
    """What happened in a conversation."""

    server_events: list[ServerEvent] = field(default_factory=list)
    client_events: list[ClientEvent] = field(default_factory=list)
    client_writes: list[bytes] = field(default_factory=list)
    server_writes: list[bytes] = field(default_factory=list)

    def results(self) -> list[TransactionComplete]:
        return [e for e in self.client_events if isinstance(e, TransactionComplete)]


def converse(
    server: ServerConnection,
    client: ClientConnection,
    script: Script,
    policy: Policy = accept_all,
    *,
    max_rounds: int = 10_000,
) -> Transcript:
    """Run both sides until neither has anything to say; return the transcript.

    The server's greeting is sent first.  When the server closes, the client gets
    end of input after the server's last bytes (and vice versa).
    """
    t = Transcript()
    server.send_greeting()
    server_closed = client_closed = False
    for _ in range(max_rounds):
        moved = False
        if not server_closed:
            while True:
                sev = server.next_event()
                if sev is NEED_DATA:
                    break
                t.server_events.append(sev)
                if isinstance(sev, ConnectionClosed):
                    server_closed = True
                    break
                policy(server, sev)
        out = server.data_to_send()
        if out:
            t.server_writes.append(out)
            client.receive_data(out)
            moved = True
        if server_closed and not client.closed:
            client.receive_data(b"")
        if not client_closed:
            while True:
                cev = client.next_event()
                if cev is NEED_DATA:
                    break
                t.client_events.append(cev)
                if isinstance(cev, ConnectionClosed):
                    client_closed = True
                    break
                script(client, cev)
        out = client.data_to_send()
        if out:
            t.client_writes.append(out)
            server.receive_data(out)
            moved = True
        if client_closed and not server_closed:
            server.receive_data(b"")
            moved = True
        if not moved:
            return t
    raise AssertionError("conversation did not settle")


@dataclass
class Message:
    sender: str
    recipients: list[str]
    content: bytes
    smtputf8: bool = False


def send_messages(messages: list[Message], *, quit: bool = True) -> Script:
    """A client script: EHLO, then each message in turn on one connection, then QUIT."""
    queue = list(messages)
    current: list[Message] = []

    def start_next(client: ClientConnection) -> None:
        if queue:
            msg = queue.pop(0)
            current[:] = [msg]
            client.send_mail(
                msg.sender, msg.recipients, size=len(msg.content), smtputf8=msg.smtputf8
            )
        elif quit:
            client.send_quit()

    def script(client: ClientConnection, event: ClientEvent) -> None:
        if isinstance(event, Greeting):
            client.send_ehlo()
        elif isinstance(event, HelloReply):
            start_next(client)
        elif isinstance(event, ReadyForData):
            client.send_data(current[0].content)
        elif isinstance(event, TransactionComplete):
            start_next(client)

    return script
