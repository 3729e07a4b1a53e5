"""ClientConnection against scripted server replies."""

from __future__ import annotations

import base64

import pytest

from relay.errors import LocalProtocolError, RemoteProtocolError
from relay.fastparse import dot_stuff
from relay.proto import (
    NEED_DATA,
    AuthReply,
    ClientConnection,
    ClientEvent,
    CommandReply,
    ConnectionClosed,
    Greeting,
    HelloReply,
    ReadyForData,
    RecipientReply,
    Reply,
    ServiceClosing,
    StartTLSReply,
    TransactionComplete,
    TransactionResult,
)

EHLO_FULL = (
    b"250-mx.test Hello\r\n250-PIPELINING\r\n250-SIZE 1000000\r\n250-8BITMIME\r\n"
    b"250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250-STARTTLS\r\n250 AUTH PLAIN LOGIN\r\n"
)
EHLO_PLAIN = b"250-mx.test Hello\r\n250 8BITMIME\r\n"


def events(client: ClientConnection, data: bytes = b"") -> list[ClientEvent]:
    """Feed `data` and collect events until NEED_DATA (or the end, or TLS)."""
    if data:
        client.receive_data(data)
    out: list[ClientEvent] = []
    while (event := client.next_event()) is not NEED_DATA:
        out.append(event)
        if isinstance(event, ConnectionClosed):
            break
        if isinstance(event, StartTLSReply) and event.reply.code == 220:
            break
    return out


def hello(ehlo_reply: bytes = EHLO_FULL) -> ClientConnection:
    client = ClientConnection("client.test")
    assert events(client, b"220 mx.test ESMTP\r\n") == [
        Greeting(Reply(220, None, ("mx.test ESMTP",)))
    ]
    client.send_ehlo()
    assert client.data_to_send() == b"EHLO client.test\r\n"
    (event,) = events(client, ehlo_reply)
    assert isinstance(event, HelloReply)
    return client


def ok(enhanced: str = "2.0.0") -> bytes:
    return f"250 {enhanced} OK\r\n".encode()


def test_nothing_may_be_sent_before_the_greeting_rfc5321_3_1() -> None:
    client = ClientConnection("client.test")
    with pytest.raises(LocalProtocolError):
        client.send_ehlo()
    assert events(client, b"220-mx.test\r\n") == []
    assert events(client, b"220 ready\r\n")[0] == Greeting(Reply(220, None, ("mx.test", "ready")))


def test_refusing_greeting_then_quit_rfc5321_3_1() -> None:
    client = ClientConnection("client.test")
    (greeting,) = events(client, b"554 5.3.2 no service\r\n")
    assert isinstance(greeting, Greeting) and greeting.reply.code == 554
    client.send_quit()
    assert client.data_to_send() == b"QUIT\r\n"
    assert events(client, b"221 2.0.0 bye\r\n") == [
        CommandReply("QUIT", Reply(221, "2.0.0", ("bye",))),
        ConnectionClosed("quit"),
    ]


def test_ehlo_extensions_rfc5321_4_1_1_1() -> None:
    client = hello()
    ext = client.extensions
    assert ext.pipelining and ext.size == 1_000_000 and ext.starttls and ext.smtputf8
    assert ext.auth_mechanisms == {"PLAIN", "LOGIN"}
    assert client.esmtp


def test_ehlo_5xx_falls_back_to_helo_rfc5321_3_2() -> None:
    client = ClientConnection("client.test")
    events(client, b"220 old.test\r\n")
    client.send_ehlo()
    client.data_to_send()
    assert events(client, b"502 5.5.1 what?\r\n") == []
    assert client.data_to_send() == b"HELO client.test\r\n"
    (event,) = events(client, b"250 old.test\r\n")
    assert isinstance(event, HelloReply)
    assert not event.esmtp and not client.esmtp
    assert not event.extensions.pipelining
    client.send_mail("a@b.example", ["x@y.example"])
    assert client.data_to_send() == b"MAIL FROM:<a@b.example>\r\n"  # one at a time


def test_ehlo_4xx_is_reported() -> None:
    client = ClientConnection("client.test")
    events(client, b"220 mx\r\n")
    client.send_ehlo()
    (event,) = events(client, b"450 4.3.2 later\r\n")
    assert isinstance(event, HelloReply) and event.reply.code == 450
    with pytest.raises(LocalProtocolError):
        client.send_mail("a@b.example", ["x@y.example"])


# --- transactions ----------------------------------------------------------------------------


def test_pipelined_transaction_is_one_write_rfc2920_3_1() -> None:
    client = hello()
    client.send_mail("a@b.example", ["x@y.example", "bad@y.example", "z@y.example"], size=42)
    assert client.data_to_send() == (
        b"MAIL FROM:<a@b.example> SIZE=42\r\nRCPT TO:<x@y.example>\r\n"
        b"RCPT TO:<bad@y.example>\r\nRCPT TO:<z@y.example>\r\nDATA\r\n"
    )
    replies = (
        ok("2.1.0") + ok("2.1.5") + b"550 5.1.1 no such user\r\n" + ok("2.1.5") + b"354 go\r\n"
    )
    collected: list[ClientEvent] = []
    for i in range(len(replies)):  # byte by byte
        collected += events(client, replies[i : i + 1])
    (ready,) = collected
    assert isinstance(ready, ReadyForData)
    assert [r.reply.code for r in ready.recipients] == [250, 550, 250]
    with pytest.raises(LocalProtocolError):
        client.send_noop()
    client.send_data(b".hidden\r\nbody")
    assert client.data_to_send() == b"..hidden\r\nbody\r\n.\r\n"
    (done,) = events(client, b"250 2.0.0 queued as X\r\n")
    assert isinstance(done, TransactionComplete)
    result = done.result
    assert result.delivered
    assert result.accepted == ("x@y.example", "z@y.example")
    assert [(r.address, r.reply.code) for r in result.outcome()] == [
        ("x@y.example", 250),
        ("bad@y.example", 550),
        ("z@y.example", 250),
    ]
    assert str(result.outcome()[0].reply) == "250 2.0.0 queued as X"
    assert not client.in_transaction


def test_next_transaction_needs_no_extra_round_trip() -> None:
    client = hello()
    for n in range(3):
        client.send_mail("a@b.example", ["x@y.example"])
        assert client.data_to_send().count(b"\r\n") == 3
        assert isinstance(events(client, ok() + ok() + b"354 go\r\n")[0], ReadyForData)
        client.send_data(b"m%d\r\n" % n)
        client.data_to_send()
        assert isinstance(events(client, ok())[0], TransactionComplete)


def test_all_recipients_rejected_with_pipelining_rfc2920_3_1() -> None:
    client = hello()
    client.send_mail("a@b.example", ["x@y.example", "z@y.example"])
    client.data_to_send()
    (done,) = events(
        client,
        ok() + b"550 5.1.1 no\r\n" + b"450 4.2.1 later\r\n" + b"554 5.5.1 no valid recipients\r\n",
    )
    assert isinstance(done, TransactionComplete)
    assert not done.result.delivered and done.result.final is None
    assert done.result.data == Reply(554, "5.5.1", ("no valid recipients",))
    assert [r.reply.code for r in done.result.outcome()] == [550, 450]
    # The cleanup RSET goes out pipelined with the next transaction: no extra round trip.
    client.send_mail("a@b.example", ["x@y.example"])
    assert client.data_to_send() == (
        b"RSET\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\nDATA\r\n"
    )
    assert isinstance(events(client, ok() + ok() + ok() + b"354 go\r\n")[0], ReadyForData)


def test_354_without_accepted_recipients_sends_an_empty_message() -> None:
    client = hello()
    client.send_mail("a@b.example", ["x@y.example"])
    client.data_to_send()
    assert events(client, ok() + b"550 5.1.1 no\r\n354 go ahead anyway\r\n") == []
    assert client.data_to_send() == b".\r\n"
    (done,) = events(client, b"554 5.5.1 nothing to deliver\r\n")
    assert isinstance(done, TransactionComplete)
    assert not done.result.delivered
    assert [r.reply.code for r in done.result.outcome()] == [550]
    client.send_noop()
    assert client.data_to_send() == b"NOOP\r\n"  # no RSET needed: the data ended


def test_rejected_mail_with_pipelining() -> None:
    client = hello()
    client.send_mail("a@b.example", ["x@y.example"])
    client.data_to_send()
    (done,) = events(client, b"550 5.7.1 sender blocked\r\n503 5.5.1 no\r\n503 5.5.1 no\r\n")
    assert isinstance(done, TransactionComplete)
    assert [r.reply.code for r in done.result.outcome()] == [550]
    client.send_noop()
    assert client.data_to_send() == b"NOOP\r\n"  # MAIL failed: nothing to reset


def test_transaction_without_pipelining_goes_one_command_at_a_time() -> None:
    client = hello(EHLO_PLAIN)
    client.send_mail("a@b.example", ["x@y.example", "z@y.example"])
    assert client.data_to_send() == b"MAIL FROM:<a@b.example>\r\n"
    assert events(client, ok()) == []
    assert client.data_to_send() == b"RCPT TO:<x@y.example>\r\n"
    assert events(client, b"550 5.1.1 no\r\n") == []
    assert client.data_to_send() == b"RCPT TO:<z@y.example>\r\n"
    assert events(client, ok()) == []
    assert client.data_to_send() == b"DATA\r\n"
    assert isinstance(events(client, b"354 go\r\n")[0], ReadyForData)


def test_without_pipelining_rejected_mail_withdraws_the_rest() -> None:
    client = hello(EHLO_PLAIN)
    client.send_mail("a@b.example", ["x@y.example", "z@y.example"])
    client.data_to_send()
    (done,) = events(client, b"451 4.3.0 try later\r\n")
    assert isinstance(done, TransactionComplete)
    assert [r.reply.code for r in done.result.outcome()] == [451, 451]
    assert client.data_to_send() == b""
    client.send_quit()
    assert client.data_to_send() == b"QUIT\r\n"


def test_without_pipelining_no_accepted_recipient_withdraws_data_and_resets() -> None:
    client = hello(EHLO_PLAIN)
    client.send_mail("a@b.example", ["x@y.example"])
    client.data_to_send()
    events(client, ok())
    client.data_to_send()
    (done,) = events(client, b"550 5.1.1 no\r\n")
    assert isinstance(done, TransactionComplete) and done.result.data is None
    assert client.data_to_send() == b"RSET\r\n"
    client.send_mail("a@b.example", ["x@y.example"])
    assert client.data_to_send() == b""  # held until the RSET reply
    assert events(client, ok()) == []
    assert client.data_to_send() == b"MAIL FROM:<a@b.example>\r\n"


def test_rejected_data_resets() -> None:
    client = hello()
    client.send_mail("a@b.example", ["x@y.example"])
    client.data_to_send()
    (done,) = events(client, ok() + ok() + b"451 4.3.0 not now\r\n")
    assert isinstance(done, TransactionComplete)
    assert [r.reply.code for r in done.result.outcome()] == [451]
    client.send_quit()
    assert client.data_to_send() == b"RSET\r\nQUIT\r\n"
    assert events(client, ok() + b"221 bye\r\n")[0] == CommandReply(
        "QUIT", Reply(221, None, ("bye",))
    )


def test_message_rejected_at_end_of_data() -> None:
    client = hello()
    client.send_mail("a@b.example", ["x@y.example"])
    client.data_to_send()
    events(client, ok() + ok() + b"354 go\r\n")
    client.send_data(b"spam\r\n")
    (done,) = events(client, b"554 5.7.1 rejected as spam\r\n")
    assert isinstance(done, TransactionComplete)
    assert not done.result.delivered
    assert [str(r.reply) for r in done.result.outcome()] == ["554 5.7.1 rejected as spam"]


def test_body_in_chunks_equals_dot_stuff() -> None:
    content = b".a\r\nb\n.c\r" + b"\n..d\r\n.\r\n" + b"end"
    client = hello()
    client.send_mail("a@b.example", ["x@y.example"])
    client.data_to_send()
    events(client, ok() + ok() + b"354 go\r\n")
    for i in range(0, len(content), 3):
        client.send_data_chunk(content[i : i + 3])
    client.end_data()
    assert client.data_to_send() == dot_stuff(content)
    with pytest.raises(LocalProtocolError):
        client.send_data(b"again")


def test_mail_parameters() -> None:
    client = hello()
    client.send_mail(
        "ü@exämple.de",
        ["ß@straße.de"],
        size=10,
        body="8BITMIME",
        smtputf8=True,
        auth="a+b@c.example",
    )
    assert client.data_to_send().split(b"\r\n")[0] == (
        "MAIL FROM:<ü@exämple.de> SIZE=10 BODY=8BITMIME SMTPUTF8 AUTH=a+2Bb@c.example".encode()
    )
    client = hello(EHLO_PLAIN)
    client.send_mail("", ["x@y.example"], size=10, auth="<>")  # not announced: left out
    assert client.data_to_send() == b"MAIL FROM:<>\r\n"


@pytest.mark.parametrize(
    ("sender", "recipients", "kwargs"),
    [
        ("a@b.example", [], {}),
        ("a@b.example>\r\nRCPT TO:<evil@x.example", ["x@y.example"], {}),
        ("a@b.example", ["x@y.example> NOTIFY=NEVER"], {}),
        ("a@b.example", ["x@y.example\r\n"], {}),
        ("ü@b.example", ["x@y.example"], {}),  # non-ASCII needs smtputf8=True
    ],
)
def test_invalid_transactions_are_local_errors(
    sender: str, recipients: list[str], kwargs: dict[str, object]
) -> None:
    client = hello()
    with pytest.raises(LocalProtocolError):
        client.send_mail(sender, recipients, **kwargs)  # type: ignore[arg-type]
    assert client.data_to_send() == b""


def test_extensions_the_server_lacks_are_local_errors() -> None:
    client = hello(b"250 mx.test\r\n")
    with pytest.raises(LocalProtocolError):
        client.send_mail("a@b.example", ["x@y.example"], smtputf8=True)
    with pytest.raises(LocalProtocolError):
        client.send_mail("a@b.example", ["x@y.example"], body="8BITMIME")
    with pytest.raises(LocalProtocolError):
        client.send_starttls()
    with pytest.raises(LocalProtocolError):
        client.send_auth_plain("u", "p")


def test_commands_wait_for_barriers_rfc2920_3_1() -> None:
    client = hello()
    client.send_noop()
    with pytest.raises(LocalProtocolError):
        client.send_mail("a@b.example", ["x@y.example"])
    assert events(client, ok()) == [CommandReply("NOOP", Reply(250, "2.0.0", ("OK",)))]
    client.send_rset()
    assert isinstance(events(client, ok())[0], CommandReply)
    client.send_mail("a@b.example", ["x@y.example"])
    with pytest.raises(LocalProtocolError):
        client.send_mail("a@b.example", ["x@y.example"])
    with pytest.raises(LocalProtocolError):
        client.send_data(b"too early")


# --- 421 and broken servers ---------------------------------------------------------------


def test_421_in_a_pipelined_group_rfc5321_3_8() -> None:
    client = hello()
    client.send_mail("a@b.example", ["x@y.example", "z@y.example"])
    client.data_to_send()
    evs = events(client, ok() + b"550 5.1.1 no\r\n421 4.3.2 shutting down\r\n")
    assert [type(e) for e in evs] == [ServiceClosing, ConnectionClosed]
    closing = evs[0]
    assert isinstance(closing, ServiceClosing)
    assert closing.reply == Reply(421, "4.3.2", ("shutting down",))
    result = closing.transaction
    assert isinstance(result, TransactionResult)
    assert [r.reply.code for r in result.outcome()] == [550, 421]
    assert client.closed
    with pytest.raises(LocalProtocolError):
        client.send_quit()


def test_421_at_end_of_data_defers_everyone() -> None:
    client = hello()
    client.send_mail("a@b.example", ["x@y.example"])
    client.data_to_send()
    events(client, ok() + ok() + b"354 go\r\n")
    client.send_data(b"x\r\n")
    closing = events(client, b"421 4.4.2 timeout\r\n")[0]
    assert isinstance(closing, ServiceClosing) and closing.transaction is not None
    assert [r.reply.code for r in closing.transaction.outcome()] == [421]


def test_unsolicited_421_rfc5321_3_8() -> None:
    client = hello()
    evs = events(client, b"421 4.4.2 idle too long\r\n")
    assert evs == [
        ServiceClosing(Reply(421, "4.4.2", ("idle too long",)), None),
        ConnectionClosed("shutdown"),
    ]


def test_421_greeting() -> None:
    client = ClientConnection("client.test")
    assert isinstance(events(client, b"421 busy\r\n")[0], ServiceClosing)


def test_unexpected_reply_is_a_remote_error() -> None:
    client = hello()
    with pytest.raises(RemoteProtocolError) as info:
        events(client, b"250 surprise\r\n")
    assert info.value.code == 451
    with pytest.raises(RemoteProtocolError):
        client.next_event()


@pytest.mark.parametrize(
    "data", [b"hello\r\n", b"25 short\r\n", b"250-a\r\n251 b\r\n", b"250" + b"x" * 5000 + b"\r\n"]
)
def test_malformed_reply_is_a_remote_error(data: bytes) -> None:
    client = ClientConnection("client.test")
    with pytest.raises(RemoteProtocolError) as info:
        events(client, data)
    assert (info.value.code, info.value.enhanced) == (451, "4.5.0")


def test_end_of_input_while_waiting_is_a_remote_error() -> None:
    client = hello()
    client.send_noop()
    client.receive_data(b"")
    with pytest.raises(RemoteProtocolError) as info:
        client.next_event()
    assert info.value.code == 421


def test_end_of_input_when_idle_closes() -> None:
    client = hello()
    client.receive_data(b"")
    assert client.next_event() == ConnectionClosed("eof")


# --- STARTTLS and AUTH ---------------------------------------------------------------------


def test_starttls_rfc3207() -> None:
    client = hello()
    client.send_starttls()
    assert client.data_to_send() == b"STARTTLS\r\n"
    assert events(client, b"220 2.0.0 go ahead\r\n") == [
        StartTLSReply(Reply(220, "2.0.0", ("go ahead",)))
    ]
    with pytest.raises(LocalProtocolError):
        client.send_ehlo()
    with pytest.raises(LocalProtocolError):
        client.receive_data(b"\x16\x03")
    client.tls_established()
    assert client.tls_active and not client.esmtp and not client.extensions.pipelining
    client.send_ehlo()  # RFC 3207 4.2: start over
    assert client.data_to_send() == b"EHLO client.test\r\n"
    events(client, b"250-mx\r\n250 PIPELINING\r\n")
    with pytest.raises(LocalProtocolError):
        client.send_starttls()


def test_starttls_refused_stays_plain() -> None:
    client = hello()
    client.send_starttls()
    assert events(client, b"454 4.7.0 TLS not available\r\n")[0] == StartTLSReply(
        Reply(454, "4.7.0", ("TLS not available",))
    )
    client.send_mail("a@b.example", ["x@y.example"])


def test_reply_injected_after_starttls_220_is_a_remote_error() -> None:
    client = hello()
    client.send_starttls()
    with pytest.raises(RemoteProtocolError):
        events(client, b"220 go ahead\r\n250 injected\r\n")


def test_auth_plain_rfc4954_4() -> None:
    client = hello()
    client.send_auth_plain("user", "secret")
    expected = base64.b64encode(b"\0user\0secret")
    assert client.data_to_send() == b"AUTH PLAIN " + expected + b"\r\n"
    assert events(client, b"235 2.7.0 ok\r\n") == [AuthReply(Reply(235, "2.7.0", ("ok",)))]
    assert client.authenticated
    with pytest.raises(LocalProtocolError):
        client.send_auth_plain("user", "secret")


def test_auth_plain_unexpected_challenge_is_cancelled() -> None:
    client = hello()
    client.send_auth_plain("user", "secret")
    client.data_to_send()
    assert events(client, b"334 \r\n") == []
    assert client.data_to_send() == b"*\r\n"
    (reply,) = events(client, b"501 5.0.0 cancelled\r\n")
    assert isinstance(reply, AuthReply) and not client.authenticated


def test_auth_login() -> None:
    client = hello()
    client.send_auth_login("üser", "pw")
    assert client.data_to_send() == b"AUTH LOGIN\r\n"
    assert events(client, b"334 VXNlcm5hbWU6\r\n") == []
    assert client.data_to_send() == base64.b64encode("üser".encode()) + b"\r\n"
    assert events(client, b"334 UGFzc3dvcmQ6\r\n") == []
    assert client.data_to_send() == base64.b64encode(b"pw") + b"\r\n"
    (reply,) = events(client, b"535 5.7.8 bad credentials\r\n")
    assert reply == AuthReply(Reply(535, "5.7.8", ("bad credentials",)))
    assert not client.authenticated


def test_recipient_reply_outcome_when_mail_fails() -> None:
    result = TransactionResult(
        "a@b.example",
        Reply(451, "4.3.0", ("later",)),
        (RecipientReply("x@y.example", Reply(503, "5.5.1", ("need MAIL",))),),
        Reply(503, "5.5.1", ("need MAIL",)),
    )
    assert result.outcome()[0].reply.code == 451
    assert not result.delivered and result.accepted == ()


def test_replies_with_trailing_data_stay_buffered() -> None:
    client = hello()
    client.send_noop()
    evs = events(client, ok() + b"250-partial")
    assert evs == [CommandReply("NOOP", Reply(250, "2.0.0", ("OK",)))]
    client.send_noop()
    assert events(client, b"\r\n250 done\r\n")[0] == CommandReply(
        "NOOP", Reply(250, None, ("partial", "done"))
    )


def test_client_misuse_is_a_local_error() -> None:
    with pytest.raises(ValueError):
        ClientConnection("bad name")
    client = hello()
    with pytest.raises(LocalProtocolError):
        client.tls_established()
    with pytest.raises(LocalProtocolError):
        client.send_data_chunk(b"x")
    with pytest.raises(LocalProtocolError):
        client.end_data()
    with pytest.raises(LocalProtocolError):
        client.send_auth_plain("us\0er", "pw")
    client.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        client.receive_data(b"250 late\r\n")


def test_pipelining_can_be_turned_off_by_the_caller() -> None:
    client = ClientConnection("client.test", pipelining=False)
    events(client, b"220 mx\r\n")
    client.send_ehlo()
    client.data_to_send()
    events(client, EHLO_FULL)
    assert client.extensions.pipelining
    client.send_mail("a@b.example", ["x@y.example"])
    assert client.data_to_send() == b"MAIL FROM:<a@b.example>\r\n"
    assert events(client, ok()) == []
    assert client.data_to_send() == b"RCPT TO:<x@y.example>\r\n"


SERVER_SIDE = (
    b"220 mx.test ESMTP\r\n"
    + EHLO_FULL
    + b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no\r\n354 go\r\n"
    + b"250 2.0.0 queued\r\n"
    + b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n354 go\r\n"
    + b"451 4.3.0 later\r\n"
    + b"221 2.0.0 bye\r\n"
)


def client_session(chunks: list[bytes]) -> tuple[list[ClientEvent], bytes]:
    """A scripted client fed the server's side in `chunks`."""
    client = ClientConnection("client.test")
    seen: list[ClientEvent] = []
    sent = b""
    messages = [["x@y.example", "bad@y.example"], ["x@y.example", "z@y.example"]]
    for chunk in chunks:
        client.receive_data(chunk)
        while (event := client.next_event()) is not NEED_DATA:
            seen.append(event)
            if isinstance(event, ConnectionClosed):
                return seen, sent
            if isinstance(event, Greeting):
                client.send_ehlo()
            elif isinstance(event, HelloReply | TransactionComplete):
                if messages:
                    client.send_mail("a@b.example", messages.pop(0))
                else:
                    client.send_quit()
            elif isinstance(event, ReadyForData):
                client.send_data(b"body\r\n")
            sent += client.data_to_send()
    return seen, sent


def test_client_fed_whole_byte_by_byte_and_with_trailing_data() -> None:
    whole = client_session([SERVER_SIDE])
    assert [type(e) for e in whole[0]] == [
        Greeting, HelloReply, ReadyForData, TransactionComplete, ReadyForData,
        TransactionComplete, CommandReply, ConnectionClosed,
    ]  # fmt: skip
    assert whole[1].count(b"DATA\r\n") == 2 and whole[1].endswith(b"QUIT\r\n")
    by_byte = client_session([SERVER_SIDE[i : i + 1] for i in range(len(SERVER_SIDE))])
    assert by_byte == whole
    assert client_session([SERVER_SIDE + b"250 trailing\r\n"]) == whole
    for cut in range(1, len(SERVER_SIDE), 11):
        assert client_session([SERVER_SIDE[:cut], SERVER_SIDE[cut:]]) == whole
