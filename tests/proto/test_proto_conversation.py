"""A ClientConnection and a ServerConnection talking to each other in memory."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from proto_pair import (
    Message,
    accept_all,
    converse,
    parse_replies,
    reject_rcpt_containing,
    send_messages,
)

from relay.fastparse import IMPLEMENTATION
from relay.proto import (
    NEED_DATA,
    AuthReply,
    AuthRequest,
    ClientConnection,
    ClientEvent,
    ConnectionClosed,
    DataComplete,
    DataFailed,
    Greeting,
    HelloReply,
    MailFrom,
    ReadyForData,
    ServerConfig,
    ServerConnection,
    ServerEvent,
    StartTLS,
    StartTLSReply,
    TransactionComplete,
)

CFG = ServerConfig(hostname="mx.test", max_message_size=1_000_000)


def test_fastparse_implementation_in_use() -> None:
    # The suite runs twice: with the compiled module and with RELAY_NO_EXTENSIONS=1.
    if os.environ.get("RELAY_NO_EXTENSIONS") == "1":
        assert IMPLEMENTATION == "py"
    elif os.environ.get("RELAY_EXPECT_EXTENSIONS") == "1":
        assert IMPLEMENTATION == "c"


def test_pipelined_transaction_with_many_recipients_some_rejected_rfc2920() -> None:
    recipients = [f"{'bad' if i % 4 == 0 else 'user'}{i}@y.example" for i in range(60)]
    content = b"Subject: hello\r\n\r\n.starts with a dot\r\nbye\r\n"
    server = ServerConnection(CFG)
    client = ClientConnection("client.test")
    t = converse(
        server,
        client,
        send_messages([Message("a@b.example", recipients, content)]),
        reject_rcpt_containing("bad"),
    )
    (complete,) = [e for e in t.server_events if isinstance(e, DataComplete)]
    accepted = tuple(r for r in recipients if "bad" not in r)
    assert complete.recipients == accepted
    assert complete.content == content
    (done,) = t.results()
    assert done.result.delivered
    assert done.result.accepted == accepted
    outcome = {r.address: r.reply for r in done.result.outcome()}
    assert all(outcome[r].code == (550 if "bad" in r else 250) for r in recipients)
    assert str(outcome["bad0@y.example"]) == "550 5.1.1 No such user bad0@y.example"
    # Writes: EHLO | MAIL+60 RCPT+DATA | body | QUIT, and the server answers the group once.
    assert len(t.client_writes) == 4
    assert t.client_writes[1].count(b"\r\n") == 62
    assert [len(parse_replies(w)) for w in t.server_writes] == [1, 1, 62, 1, 1]
    assert t.client_events[-1] == ConnectionClosed("quit")
    assert t.server_events[-1] == ConnectionClosed("quit")


def test_connection_reuse_costs_two_round_trips_per_message() -> None:
    messages = [Message("a@b.example", [f"r{i}@y.example"], b"m%d\r\n" % i) for i in range(5)]
    t = converse(ServerConnection(CFG), ClientConnection("c.test"), send_messages(messages))
    assert [e.content for e in t.server_events if isinstance(e, DataComplete)] == [
        m.content for m in messages
    ]
    assert all(d.result.delivered for d in t.results())
    assert len(t.client_writes) == 1 + 2 * len(messages) + 1


def test_server_without_pipelining() -> None:
    cfg = ServerConfig(hostname="mx.test", pipelining=False)
    recipients = ["bad1@y.example", "u2@y.example", "u3@y.example"]
    t = converse(
        ServerConnection(cfg),
        ClientConnection("c.test"),
        send_messages([Message("a@b.example", recipients, b"x\r\n")] * 2),
        reject_rcpt_containing("bad"),
    )
    results = t.results()
    assert len(results) == 2 and all(r.result.delivered for r in results)
    assert [r.reply.code for r in results[0].result.outcome()] == [550, 250, 250]
    assert all(w.count(b"\r\n") == 1 for w in t.client_writes[:-1] if not w.endswith(b".\r\n"))


def test_all_recipients_rejected_then_next_message() -> None:
    messages = [
        Message("a@b.example", ["bad1@y.example", "bad2@y.example"], b"lost\r\n"),
        Message("a@b.example", ["ok@y.example"], b"kept\r\n"),
    ]
    t = converse(
        ServerConnection(CFG),
        ClientConnection("c.test"),
        send_messages(messages),
        reject_rcpt_containing("bad"),
    )
    first, second = t.results()
    assert not first.result.delivered and first.result.data is not None
    assert first.result.data.code == 554
    assert second.result.delivered
    assert [e.content for e in t.server_events if isinstance(e, DataComplete)] == [b"kept\r\n"]
    assert t.client_writes[2].startswith(b"RSET\r\nMAIL FROM:")  # cleanup rides along


def test_size_limits_rfc1870() -> None:
    cfg = ServerConfig(hostname="mx.test", max_message_size=50)
    big = b"x" * 60 + b"\r\n"
    messages = [
        Message("a@b.example", ["r@y.example"], big),  # refused at MAIL (SIZE=62)
        Message("a@b.example", ["r@y.example"], b"small\r\n"),
    ]
    t = converse(ServerConnection(cfg), ClientConnection("c.test"), send_messages(messages))
    first, second = t.results()
    assert (first.result.mail.code, first.result.mail.enhanced) == (552, "5.3.4")
    assert second.result.delivered


def test_data_failure_without_size_declaration() -> None:
    cfg = ServerConfig(hostname="mx.test", max_message_size=50)

    def script(client: ClientConnection, event: ClientEvent) -> None:
        if isinstance(event, Greeting):
            client.send_ehlo()
        elif isinstance(event, HelloReply):
            client.send_mail("a@b.example", ["r@y.example"])
        elif isinstance(event, ReadyForData):
            client.send_data(b"y" * 70 + b"\r\n")
        elif isinstance(event, TransactionComplete):
            client.send_quit()

    def policy(server: ServerConnection, event: ServerEvent) -> None:
        if isinstance(event, DataFailed):
            server.send_reply(event.code, event.enhanced, event.text)
        else:
            server.accept()

    t = converse(ServerConnection(cfg), ClientConnection("c.test"), script, policy)
    (done,) = t.results()
    assert done.result.final is not None
    assert (done.result.final.code, done.result.final.enhanced) == (552, "5.3.4")
    assert t.client_events[-1] == ConnectionClosed("quit")


def test_starttls_and_auth_conversation_rfc3207_rfc4954() -> None:
    cfg = ServerConfig(
        hostname="mx.test",
        starttls=True,
        auth_mechanisms=("PLAIN", "LOGIN"),
        require_auth_for_mail=True,
    )
    seen: list[str] = []

    def script(client: ClientConnection, event: ClientEvent) -> None:
        if isinstance(event, Greeting):
            client.send_ehlo()
        elif isinstance(event, HelloReply):
            if not client.tls_active:
                assert "AUTH" not in event.extensions.keywords  # not before TLS
                client.send_starttls()
            else:
                client.send_auth_login("user", "pass")
        elif isinstance(event, StartTLSReply):
            assert event.reply.code == 220
            client.tls_established()
            client.send_ehlo()
        elif isinstance(event, AuthReply):
            seen.append(str(event.reply))
            client.send_mail("a@b.example", ["r@y.example"])
        elif isinstance(event, ReadyForData):
            client.send_data(b"secret\r\n")
        elif isinstance(event, TransactionComplete):
            client.send_quit()

    def policy(server: ServerConnection, event: ServerEvent) -> None:
        if isinstance(event, AuthRequest):
            if (event.username, event.password) == ("user", "pass"):
                server.accept()
            else:
                server.send_reply(535, "5.7.8", "bad credentials")
        else:
            accept_all(server, event)

    server = ServerConnection(cfg)
    t = converse(server, ClientConnection("c.test"), script, policy)
    assert seen == ["235 2.7.0 Authentication successful"]
    assert any(isinstance(e, StartTLS) for e in t.server_events)
    assert server.tls_active and server.authenticated_as == "user"
    assert t.results()[0].result.delivered


def test_smtputf8_end_to_end_rfc6531() -> None:
    msg = Message("ü@exämple.de", ["ß@straße.de"], "Subject: grüße\r\n\r\n".encode(), True)
    t = converse(ServerConnection(CFG), ClientConnection("c.test"), send_messages([msg]))
    mail = next(e for e in t.server_events if isinstance(e, MailFrom))
    assert mail.smtputf8 and mail.sender == "ü@exämple.de"
    assert t.results()[0].result.delivered


# --- smuggling (end of data only at <CRLF>.<CRLF>) ------------------------------------------

SMUGGLING = [
    b"\n.\n",
    b"\r.\r",
    b"\n.\r\n",
    b"\r\n.\n",
    b"\r\n.\r",
    b"\r.\r\n",
    b"\n.\r",
    b"\r\n.\r\r\n",
    b"\r\n\x00.\r\n",
    b"\r\n .\r\n",
    b"\n\n.\n\n",
]


def smuggle(sequence: bytes) -> bytes:
    return (
        b"EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n"
        b"Subject: hi\r\n\r\nbody"
        + sequence
        + b"MAIL FROM:<evil@x.example>\r\nRCPT TO:<victim@y.example>\r\nDATA\r\n"
        b"Subject: smuggled\r\n\r\nevil\r\n.\r\nQUIT\r\n"
    )


def serve(config: ServerConfig, data: bytes, chunk: int) -> list[ServerEvent]:
    server = ServerConnection(config)
    server.send_greeting()
    events: list[ServerEvent] = []
    for i in range(0, len(data), chunk):
        server.receive_data(data[i : i + chunk])
        while (event := server.next_event()) is not NEED_DATA:
            events.append(event)
            if isinstance(event, ConnectionClosed):
                return events
            if isinstance(event, DataFailed):
                server.send_reply(event.code, event.enhanced, event.text)
            else:
                server.accept()
    return events


@pytest.mark.parametrize("sequence", SMUGGLING, ids=repr)
@pytest.mark.parametrize("policy", ["reject", "normalize"])
@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])
def test_smuggling_sequences_yield_exactly_one_message(
    sequence: bytes, policy: str, chunk: int
) -> None:
    cfg = ServerConfig(hostname="mx.test", bare_line_ending=policy)  # type: ignore[arg-type]
    events = serve(cfg, smuggle(sequence), chunk)
    mails = [e for e in events if isinstance(e, MailFrom)]
    messages = [e for e in events if isinstance(e, DataComplete | DataFailed)]
    assert mails == [MailFrom("a@b.example")]
    assert len(messages) == 1
    assert events[-1] == ConnectionClosed("quit")
    (message,) = messages
    if isinstance(message, DataComplete):
        assert b"MAIL FROM:<evil@x.example>" in message.content
        assert message.content.endswith(b"evil\r\n")
    else:
        assert policy == "reject"


# --- content round trip ------------------------------------------------------------------------

line_text = st.binary(max_size=80).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(line_text, st.sampled_from([b".", b"..", b".x", b""])), max_size=30))
def test_any_content_arrives_unchanged(lines: list[bytes]) -> None:
    content = b"".join(line + b"\r\n" for line in lines)
    t = converse(
        ServerConnection(CFG),
        ClientConnection("c.test"),
        send_messages([Message("a@b.example", ["r@y.example"], content)]),
    )
    (complete,) = [e for e in t.server_events if isinstance(e, DataComplete)]
    assert complete.content == content
