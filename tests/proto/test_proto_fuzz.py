"""Fuzzing: any bytes in any chunking yield events or RemoteProtocolError, nothing else."""

from __future__ import annotations

import base64

from hypothesis import given, settings
from hypothesis import strategies as st
from proto_pair import parse_replies

from relay.errors import RemoteProtocolError
from relay.proto import (
    NEED_DATA,
    ClientConnection,
    ConnectionClosed,
    DataFailed,
    Greeting,
    HelloReply,
    ReadyForData,
    ServerConfig,
    ServerConnection,
    StartTLS,
    StartTLSReply,
    TransactionComplete,
)

CFG = ServerConfig(
    hostname="mx.test",
    max_message_size=300,
    starttls=True,
    auth_mechanisms=("PLAIN", "LOGIN"),
    require_tls_for_auth=False,
    max_recipients=3,
    max_errors=0,
    command_line_limit=512,
    text_line_limit=100,
)

COMMANDS = [
    b"EHLO c.test\r\n",
    b"HELO c.test\r\n",
    b"MAIL FROM:<a@b.example>\r\n",
    b"MAIL FROM:<> SIZE=10 BODY=8BITMIME SMTPUTF8\r\n",
    b"MAIL FROM:<a@b.example> AUTH=<>\r\n",
    b"RCPT TO:<x@y.example>\r\n",
    "RCPT TO:<ü@y.example>\r\n".encode(),
    b"RCPT TO:<@r.example:x@y.example>\r\n",
    b"DATA\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"QUIT\r\n",
    b"STARTTLS\r\n",
    b"AUTH PLAIN\r\n",
    b"AUTH LOGIN\r\n",
    b"AUTH PLAIN " + base64.b64encode(b"\0u\0p") + b"\r\n",
    base64.b64encode(b"user") + b"\r\n",
    b"*\r\n",
    b"VRFY x\r\n",
    b".\r\n",
    b"\r\n.\r\n",
    b"..x\r\n",
    b"text line\r\n",
    b"bare\n",
    b"\r",
    b"x" * 150 + b"\r\n",
]

chunkings = st.lists(st.integers(1, 64), min_size=1, max_size=50)
inputs = st.one_of(
    st.binary(max_size=600),
    st.lists(st.one_of(st.sampled_from(COMMANDS), st.binary(max_size=20)), max_size=40).map(
        b"".join
    ),
)


def split(data: bytes, sizes: list[int]) -> list[bytes]:
    chunks, pos, i = [], 0, 0
    while pos < len(data):
        size = sizes[i % len(sizes)]
        chunks.append(data[pos : pos + size])
        pos += size
        i += 1
    return chunks


@settings(max_examples=300, deadline=None)
@given(inputs, chunkings, st.data())
def test_server_any_bytes_yield_events_or_remote_error(
    data: bytes, sizes: list[int], draw: st.DataObject
) -> None:
    server = ServerConnection(CFG)
    if draw.draw(st.booleans(), "early talker"):
        server.receive_data(b"EHLO early\r\n")
    server.send_greeting()
    out = [server.data_to_send()]
    try:
        for chunk in [*split(data, sizes), b""]:
            server.receive_data(chunk)
            while True:
                event = server.next_event()
                if event is NEED_DATA or isinstance(event, ConnectionClosed):
                    break
                choice = draw.draw(st.sampled_from(["accept", "reject", "421"]), "answer")
                if isinstance(event, DataFailed):
                    server.send_reply(event.code, event.enhanced, event.text)
                elif choice == "accept":
                    server.accept()
                    if isinstance(event, StartTLS):
                        server.tls_established()
                elif choice == "reject":
                    server.send_reply(550, "5.7.1", "no")
                else:
                    server.send_reply(421, "4.3.2", "bye")
            out.append(server.data_to_send())
            if isinstance(event, ConnectionClosed):
                assert server.next_event() == event
                break
    except RemoteProtocolError as exc:
        assert exc.code >= 400  # the reply is queued for the caller to write
        out.append(server.data_to_send())
        assert parse_replies(out[-1])[-1].code == exc.code
    # Every byte the server wrote is a well-formed sequence of replies.
    parse_replies(b"".join(out))


@settings(max_examples=300, deadline=None)
@given(inputs, chunkings)
def test_server_chunking_never_changes_the_outcome(data: bytes, sizes: list[int]) -> None:
    def run(chunks: list[bytes]) -> tuple[list[object], bytes]:
        server = ServerConnection(CFG)
        server.send_greeting()
        seen: list[object] = []
        out = b""
        try:
            for chunk in chunks:
                server.receive_data(chunk)
                while (event := server.next_event()) is not NEED_DATA:
                    seen.append(event)
                    if isinstance(event, ConnectionClosed):
                        return seen, out + server.data_to_send()
                    if isinstance(event, DataFailed):
                        server.send_reply(event.code, event.enhanced, event.text)
                    elif isinstance(event, StartTLS):
                        server.send_reply(454, "4.7.0", "not now")
                    else:
                        server.accept()
                out += server.data_to_send()
        except RemoteProtocolError as exc:
            seen.append(("error", exc.code))
            out += server.data_to_send()
        return seen, out

    assert run(split(data, sizes)) == run([data]) if data else True


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from(
                [
                    b"220 mx\r\n",
                    b"250-mx\r\n250-PIPELINING\r\n250 STARTTLS\r\n",
                    b"250 2.0.0 ok\r\n",
                    b"354 go\r\n",
                    b"550 5.1.1 no\r\n",
                    b"421 4.3.2 bye\r\n",
                    b"220 2.0.0 tls\r\n",
                    b"502 5.5.1 no\r\n",
                ]
            ),
            st.binary(max_size=30),
        ),
        max_size=20,
    ).map(b"".join),
    chunkings,
)
def test_client_any_bytes_yield_events_or_remote_error(data: bytes, sizes: list[int]) -> None:
    client = ClientConnection("c.test")
    try:
        for chunk in [*split(data, sizes), b""]:
            client.receive_data(chunk)
            while (event := client.next_event()) is not NEED_DATA:
                if isinstance(event, ConnectionClosed):
                    return
                if isinstance(event, Greeting):
                    client.send_ehlo()
                elif isinstance(event, HelloReply) and event.reply.code == 250:
                    client.send_mail("a@b.example", ["x@y.example", "z@y.example"])
                elif isinstance(event, StartTLSReply) and event.reply.code == 220:
                    client.tls_established()
                elif isinstance(event, ReadyForData):
                    client.send_data(b"x\r\n")
                elif isinstance(event, TransactionComplete):
                    client.send_quit()
            client.data_to_send()
    except RemoteProtocolError as exc:
        assert 400 <= exc.code < 500
