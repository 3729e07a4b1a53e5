"""ServerConnection: commands, ordering, errors, DATA, STARTTLS and AUTH."""

from __future__ import annotations

import base64

import pytest
from proto_pair import Policy, parse_replies

from relay.errors import (
    BareLineEndingError,
    LineTooLongError,
    LocalProtocolError,
    MessageTooLargeError,
    RemoteProtocolError,
)
from relay.proto import (
    NEED_DATA,
    AuthRequest,
    ConnectionClosed,
    DataCommand,
    DataComplete,
    DataFailed,
    Hello,
    MailFrom,
    RcptTo,
    Reply,
    ServerConfig,
    ServerConnection,
    ServerEvent,
    StartTLS,
)

CFG = ServerConfig(
    hostname="mx.test",
    max_message_size=10_000,
    starttls=True,
    auth_mechanisms=("PLAIN", "LOGIN"),
    require_tls_for_auth=False,
)


def accept(conn: ServerConnection, event: ServerEvent) -> None:
    conn.accept()


def greeted(config: ServerConfig = CFG, *, tls_active: bool = False) -> ServerConnection:
    conn = ServerConnection(config, tls_active=tls_active)
    conn.send_greeting()
    conn.data_to_send()
    return conn


def run(
    conn: ServerConnection, data: bytes, policy: Policy = accept
) -> tuple[list[ServerEvent], list[Reply]]:
    """Feed `data`, answer every event with `policy`, return events and replies.

    Stops early when the policy left an event unanswered or TLS must start.
    """
    if data:
        conn.receive_data(data)
    events: list[ServerEvent] = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            break
        events.append(event)
        if isinstance(event, ConnectionClosed):
            break
        policy(conn, event)
        if conn.awaiting_reply is not None or conn.phase == "tls":
            break
    return events, parse_replies(conn.data_to_send())


def codes(replies: list[Reply]) -> list[tuple[int, str | None]]:
    return [(r.code, r.enhanced) for r in replies]


def ready(config: ServerConfig = CFG, **kw: bool) -> ServerConnection:
    """A greeted server after an accepted EHLO."""
    conn = greeted(config, **kw)
    run(conn, b"EHLO client.test\r\n")
    return conn


# --- greeting -------------------------------------------------------------------------


def test_greeting_rfc5321_3_1() -> None:
    conn = ServerConnection(CFG)
    with pytest.raises(LocalProtocolError):
        conn.next_event()
    conn.send_greeting()
    assert conn.data_to_send() == b"220 mx.test ESMTP ready\r\n"
    assert not conn.early_talker
    with pytest.raises(LocalProtocolError):
        conn.send_greeting()


def test_early_talker_is_flagged_and_its_commands_wait_rfc5321_3_1() -> None:
    conn = ServerConnection(CFG)
    conn.receive_data(b"EHLO hasty\r\n")
    assert conn.early_talker
    conn.send_greeting()
    events, replies = run(conn, b"")
    assert events == [Hello("EHLO", "hasty")]
    assert codes(replies)[0] == (220, None)


def test_refusing_greeting_answers_503_until_quit_rfc5321_3_1() -> None:
    conn = ServerConnection(CFG)
    conn.send_greeting("no service here", code=554)
    assert conn.data_to_send() == b"554 mx.test no service here\r\n"
    events, replies = run(conn, b"EHLO x\r\nMAIL FROM:<a@b.example>\r\nQUIT\r\n")
    assert events == [ConnectionClosed("quit")]
    assert codes(replies) == [(503, "5.5.1"), (503, "5.5.1"), (221, "2.0.0")]


def test_greeting_421_closes() -> None:
    conn = ServerConnection(CFG)
    conn.send_greeting("busy", code=421)
    assert conn.next_event() == ConnectionClosed("shutdown")


# --- EHLO / HELO ----------------------------------------------------------------------


def test_ehlo_lists_enabled_extensions_rfc5321_4_1_1_1() -> None:
    conn = greeted()
    events, replies = run(conn, b"EHLO client.test\r\n")
    assert events == [Hello("EHLO", "client.test")]
    (reply,) = replies
    assert reply.code == 250 and reply.enhanced is None  # RFC 2034: none on EHLO
    assert reply.lines == (
        "mx.test Hello client.test",
        "PIPELINING",
        "SIZE 10000",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "STARTTLS",
        "AUTH PLAIN LOGIN",
    )
    assert conn.esmtp and conn.hello_name == "client.test"


def test_ehlo_omits_what_is_disabled() -> None:
    cfg = ServerConfig(
        hostname="mx.test",
        pipelining=False,
        eightbitmime=False,
        smtputf8=False,
        enhanced_status_codes=False,
        auth_mechanisms=("PLAIN",),  # require_tls_for_auth: hidden before TLS
    )
    _, replies = run(greeted(cfg), b"EHLO c\r\n")
    assert replies[0].lines == ("mx.test Hello c", "SIZE")
    _, replies = run(greeted(cfg, tls_active=True), b"EHLO c\r\n")
    assert replies[0].lines == ("mx.test Hello c", "SIZE", "AUTH PLAIN")


def test_starttls_not_offered_once_tls_is_active_rfc3207_4_2() -> None:
    _, replies = run(greeted(tls_active=True), b"EHLO c\r\n")
    assert "STARTTLS" not in replies[0].lines


def test_helo_is_one_line_and_disallows_mail_parameters_rfc5321_4_1_1_1() -> None:
    conn = greeted()
    events, replies = run(conn, b"HELO client.test\r\n")
    assert events == [Hello("HELO", "client.test")]
    assert replies[0].lines == ("mx.test Hello client.test",)
    assert not conn.esmtp
    _, replies = run(conn, b"MAIL FROM:<a@b.example> SIZE=10\r\n")
    assert codes(replies) == [(555, "5.5.4")]
    events, _ = run(conn, b"MAIL FROM:<a@b.example>\r\n")
    assert events == [MailFrom("a@b.example")]


def test_hello_needs_an_argument() -> None:
    _, replies = run(greeted(), b"EHLO\r\nHELO \r\nEHLO a b\r\n")
    assert codes(replies) == [(501, "5.5.4")] * 3


def test_rejected_hello_leaves_no_hello() -> None:
    conn = greeted()

    def reject(conn: ServerConnection, event: ServerEvent) -> None:
        conn.send_reply(550, "5.7.1", "go away")

    _, replies = run(conn, b"EHLO bad\r\n", reject)
    assert codes(replies) == [(550, "5.7.1")]
    _, replies = run(conn, b"MAIL FROM:<a@b.example>\r\n")
    assert codes(replies) == [(503, "5.5.1")]


def test_ehlo_resets_the_transaction_rfc5321_4_1_4() -> None:
    conn = ready()
    run(conn, b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n")
    assert conn.in_transaction
    run(conn, b"EHLO again\r\n")
    assert not conn.in_transaction
    _, replies = run(conn, b"DATA\r\n")
    assert codes(replies) == [(503, "5.5.1")]


# --- ordering ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        (b"MAIL FROM:<a@b.example>\r\n", (503, "5.5.1")),  # before EHLO
        (b"RCPT TO:<a@b.example>\r\n", (503, "5.5.1")),
        (b"DATA\r\n", (503, "5.5.1")),
    ],
)
def test_commands_out_of_order_get_503_rfc5321_4_1_4(
    script: bytes, expected: tuple[int, str]
) -> None:
    events, replies = run(greeted(), script)
    assert events == []
    assert codes(replies) == [expected]


def test_rcpt_before_mail_and_nested_mail_get_503() -> None:
    conn = ready()
    _, replies = run(conn, b"RCPT TO:<a@b.example>\r\nDATA\r\n")
    assert codes(replies) == [(503, "5.5.1"), (503, "5.5.1")]
    _, replies = run(conn, b"MAIL FROM:<a@b.example>\r\nMAIL FROM:<a@b.example>\r\nDATA\r\n")
    assert codes(replies) == [(250, "2.1.0"), (503, "5.5.1"), (503, "5.5.1")]
    assert replies[2].lines == ("Need RCPT command",)


def test_data_with_no_accepted_recipient_is_554_rfc2920_3_1() -> None:
    conn = ready()

    def reject_rcpt(conn: ServerConnection, event: ServerEvent) -> None:
        if isinstance(event, RcptTo):
            conn.send_reply(550, "5.1.1", "unknown user")
        else:
            conn.accept()

    events, replies = run(
        conn, b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\nDATA\r\n", reject_rcpt
    )
    assert [type(e) for e in events] == [MailFrom, RcptTo]
    assert codes(replies) == [(250, "2.1.0"), (550, "5.1.1"), (554, "5.5.1")]


def test_rset_clears_the_transaction_rfc5321_4_1_1_5() -> None:
    conn = ready()
    run(conn, b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\n")
    _, replies = run(conn, b"RSET\r\nDATA\r\nRSET x\r\n")
    assert codes(replies) == [(250, "2.0.0"), (503, "5.5.1"), (501, "5.5.4")]
    events, _ = run(conn, b"MAIL FROM:<a@b.example>\r\n")
    assert events == [MailFrom("a@b.example")]


# --- commands the server answers itself --------------------------------------------------


def test_self_answered_commands_rfc5321_4_1_1() -> None:
    conn = greeted()
    events, replies = run(
        conn,
        b"NOOP\r\nNOOP anything\r\nHELP\r\nVRFY user\r\nVRFY\r\nEXPN list\r\n"
        b"TURN\r\nBDAT 10 LAST\r\nFOO\r\n\r\nQUIT now\r\nQUIT\r\nNOOP\r\n",
    )
    assert events == [ConnectionClosed("quit")]
    assert codes(replies) == [
        (250, "2.0.0"),
        (250, "2.0.0"),
        (214, "2.0.0"),
        (252, "2.5.0"),  # RFC 5321 3.5.3
        (501, "5.5.4"),
        (502, "5.5.1"),
        (502, "5.5.1"),
        (502, "5.5.1"),  # no CHUNKING
        (500, "5.5.2"),
        (500, "5.5.2"),
        (501, "5.5.4"),
        (221, "2.0.0"),
    ]
    assert conn.next_event() == ConnectionClosed("quit")
    conn.receive_data(b"ignored after close")
    assert conn.data_to_send() == b""


def test_commands_are_case_insensitive_rfc5321_2_4() -> None:
    conn = greeted()
    events, _ = run(conn, b"ehlo c\r\nmail from:<a@b.example>\r\nrcpt to:<x@y.example>\r\n")
    assert [type(e) for e in events] == [Hello, MailFrom, RcptTo]


def test_enhanced_codes_only_when_announced_rfc2034() -> None:
    cfg = ServerConfig(hostname="mx.test", enhanced_status_codes=False)
    _, replies = run(greeted(cfg), b"NOOP\r\nFOO\r\n")
    assert codes(replies) == [(250, None), (500, None)]


def test_error_limit_closes_with_421() -> None:
    cfg = ServerConfig(hostname="mx.test", max_errors=3)
    conn = greeted(cfg)
    events, replies = run(conn, b"A\r\nB\r\nNOOP\r\nC\r\nNOOP\r\n")
    assert events == [ConnectionClosed("errors")]
    assert codes(replies) == [
        (500, "5.5.2"),
        (500, "5.5.2"),
        (250, "2.0.0"),
        (500, "5.5.2"),
        (421, "4.7.0"),
    ]
    assert conn.error_count == 3


# --- MAIL and RCPT ------------------------------------------------------------------------


def test_mail_parameters_rfc1870_rfc6152_rfc6531_rfc4954() -> None:
    conn = ready()
    events, replies = run(
        conn, b"MAIL FROM:<a@b.example> SIZE=500 BODY=8bitmime SMTPUTF8 AUTH=a+2Bb@c.example\r\n"
    )
    assert events == [MailFrom("a@b.example", 500, "8BITMIME", True, "a+b@c.example")]
    assert codes(replies) == [(250, "2.1.0")]


def test_null_reverse_path_rfc5321_4_5_5() -> None:
    events, _ = run(ready(), b"MAIL FROM:<>\r\n")
    assert events == [MailFrom("")]


def test_source_route_is_stripped_rfc5321_appendix_c() -> None:
    events, _ = run(
        ready(),
        b"MAIL FROM:<@r1.example,@r2.example:a@b.example>\r\nRCPT TO:<@r.example:x@y.example>\r\n",
    )
    assert events == [MailFrom("a@b.example"), RcptTo("x@y.example")]


def test_space_after_colon_is_tolerated() -> None:
    events, _ = run(ready(), b"MAIL FROM: <a@b.example>\r\nRCPT TO: <postmaster>\r\n")
    assert events == [MailFrom("a@b.example"), RcptTo("postmaster")]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"MAIL FROM:a@b.example", (501, "5.1.7")),
        (b"MAIL FROM:<a@b.example", (501, "5.1.7")),
        (b"MAIL FROM:<a b@b.example>", (501, "5.1.7")),
        (b"MAIL TO:<a@b.example>", (501, "5.5.2")),
        (b"MAIL", (501, "5.5.2")),
        (b"MAIL FROM:<a@b.example> SIZE=1 SIZE=2", (501, "5.5.4")),
        (b"MAIL FROM:<a@b.example> SIZE=x", (501, "5.5.4")),
        (b"MAIL FROM:<a@b.example> SIZE", (501, "5.5.4")),
        (b"MAIL FROM:<a@b.example> SIZE=10001", (552, "5.3.4")),  # RFC 1870 6
        (b"MAIL FROM:<a@b.example> BODY=BINARYMIME", (501, "5.5.4")),
        (b"MAIL FROM:<a@b.example> SMTPUTF8=yes", (501, "5.5.4")),
        (b"MAIL FROM:<a@b.example> AUTH=+zz", (501, "5.5.4")),
        (b"MAIL FROM:<a@b.example> RET=HDRS", (555, "5.5.4")),  # no DSN: RFC 5321 4.1.1.11
        (b"MAIL FROM:<a@b.example> X-FOO", (555, "5.5.4")),
        ("MAIL FROM:<ü@b.example>".encode(), (553, "5.6.7")),  # RFC 6531 3.5
        (b"MAIL FROM:<a@b.example> X=\xc3\xbc", (555, "5.5.4")),
        (b"MAIL FROM:<\xff@b.example>", (500, "5.5.2")),
    ],
)
def test_bad_mail_commands(line: bytes, expected: tuple[int, str]) -> None:
    conn = ready()
    events, replies = run(conn, line + b"\r\n")
    assert events == []
    assert codes(replies) == [expected]
    assert not conn.in_transaction


def test_disabled_extensions_parameters_get_555() -> None:
    cfg = ServerConfig(hostname="mx.test", eightbitmime=False, smtputf8=False)
    _, replies = run(
        ready(cfg),
        b"MAIL FROM:<a@b.example> BODY=8BITMIME\r\nMAIL FROM:<a@b.example> SMTPUTF8\r\n"
        b"MAIL FROM:<a@b.example> AUTH=<>\r\n",
    )
    assert codes(replies) == [(555, "5.5.4")] * 3


def test_smtputf8_addresses_only_with_smtputf8_rfc6531_3_4() -> None:
    conn = ready()
    events, replies = run(
        conn,
        "MAIL FROM:<ü@exämple.de> SMTPUTF8\r\nRCPT TO:<ß@straße.de>\r\n".encode(),
    )
    assert events == [MailFrom("ü@exämple.de", smtputf8=True), RcptTo("ß@straße.de")]
    conn = ready()
    _, replies = run(conn, "MAIL FROM:<a@b.example>\r\nRCPT TO:<ß@straße.de>\r\n".encode())
    assert codes(replies) == [(250, "2.1.0"), (553, "5.6.7")]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"RCPT TO:<>", (501, "5.1.3")),
        (b"RCPT TO:x@y.example", (501, "5.1.3")),
        (b"RCPT FROM:<x@y.example>", (501, "5.5.2")),
        (b"RCPT TO:<x@y.example> NOTIFY=NEVER", (555, "5.5.4")),
        (b"RCPT TO:<x@y.example> NOTIFY=NEVER NOTIFY=NEVER", (501, "5.1.3")),
    ],
)
def test_bad_rcpt_commands(line: bytes, expected: tuple[int, str]) -> None:
    conn = ready()
    run(conn, b"MAIL FROM:<a@b.example>\r\n")
    events, replies = run(conn, line + b"\r\n")
    assert events == []
    assert codes(replies) == [expected]


def test_recipient_limit_rfc5321_4_5_3_1_10() -> None:
    cfg = ServerConfig(hostname="mx.test", max_recipients=2)
    conn = ready(cfg)
    events, replies = run(
        conn,
        b"MAIL FROM:<a@b.example>\r\n"
        + b"".join(b"RCPT TO:<r%d@y.example>\r\n" % i for i in range(4))
        + b"DATA\r\n",
    )
    assert [type(e) for e in events] == [MailFrom, RcptTo, RcptTo, DataCommand]
    assert codes(replies)[3:5] == [(452, "4.5.3"), (452, "4.5.3")]


def test_per_connection_size_limit() -> None:
    conn = ready()
    conn.message_size_limit = 100
    _, replies = run(conn, b"MAIL FROM:<a@b.example> SIZE=101\r\n")
    assert codes(replies) == [(552, "5.3.4")]
    conn.message_size_limit = 0
    events, _ = run(conn, b"MAIL FROM:<a@b.example> SIZE=99999999\r\n")
    assert events == [MailFrom("a@b.example", size=99999999)]


# --- line limits ----------------------------------------------------------------------


def test_command_line_limit_rfc5321_4_5_3_1_4() -> None:
    conn = greeted()
    ok = b"NOOP " + b"x" * (512 - 7) + b"\r\n"
    too_long = b"NOOP " + b"x" * (512 - 6) + b"\r\n"
    huge = b"NOOP " + b"x" * 100_000 + b"\r\n"
    _, replies = run(conn, ok + too_long + huge + b"NOOP\r\n")
    assert codes(replies) == [(250, "2.0.0"), (500, "5.5.2"), (500, "5.5.2"), (250, "2.0.0")]


def test_mail_line_may_grow_with_extension_parameters_rfc1870_rfc4954() -> None:
    conn = ready()
    auth = b"x" * 490
    line = b"MAIL FROM:<a@b.example> SIZE=100 AUTH=" + auth + b" BODY=8BITMIME"
    assert 512 < len(line) + 2 <= CFG.mail_line_limit
    events, _ = run(conn, line + b"\r\n")
    assert events == [MailFrom("a@b.example", 100, "8BITMIME", False, "x" * 490)]
    _, replies = run(conn, b"RSET\r\nRCPT TO:<" + b"x" * 500 + b"@y.example>\r\n")
    assert codes(replies) == [(250, "2.0.0"), (500, "5.5.2")]  # other commands: 512


def test_bare_lf_in_command_is_rejected_rfc5321_2_3_8() -> None:
    _, replies = run(greeted(), b"NOOP\nNOOP\r\nNO\rOP\r\n")
    assert codes(replies) == [(500, "5.5.2"), (250, "2.0.0"), (500, "5.5.2")]


# --- DATA -----------------------------------------------------------------------------------


TRANSACTION = (
    b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\nRCPT TO:<z@y.example>\r\nDATA\r\n"
)


def test_message_is_received_rfc5321_4_1_1_4() -> None:
    conn = ready()
    events, replies = run(conn, TRANSACTION)
    assert [type(e) for e in events] == [MailFrom, RcptTo, RcptTo, DataCommand]
    assert codes(replies)[-1] == (354, None)
    events, replies = run(conn, b"Subject: t\r\n\r\n..leading dot\r\nbody\r\n.\r\n")
    (event,) = events
    assert isinstance(event, DataComplete)
    assert event.content == b"Subject: t\r\n\r\n.leading dot\r\nbody\r\n"
    assert event.mail == MailFrom("a@b.example")
    assert event.recipients == ("x@y.example", "z@y.example")
    assert codes(replies) == [(250, "2.0.0")]
    assert not conn.in_transaction


def test_pipelined_group_with_content_in_the_same_read_rfc2920_3_1() -> None:
    conn = ready()
    content = b"line one\r\n" + b"y" * 990 + b"\r\n"  # longer than any command limit
    conn.receive_data(TRANSACTION + content + b".\r\nRSET\r\nQUIT\r\n")
    events = []
    while (event := conn.next_event()) is not NEED_DATA:
        events.append(event)
        if isinstance(event, ConnectionClosed):
            break
        conn.accept()
    assert [type(e) for e in events] == [
        MailFrom,
        RcptTo,
        RcptTo,
        DataCommand,
        DataComplete,
        ConnectionClosed,
    ]
    complete = events[4]
    assert isinstance(complete, DataComplete)
    assert complete.content == content
    replies = parse_replies(conn.data_to_send())  # one write for the whole group
    assert [r.code for r in replies] == [250, 250, 250, 354, 250, 250, 221]


def test_rejected_data_command_leaves_following_lines_as_commands() -> None:
    conn = ready()

    def policy(conn: ServerConnection, event: ServerEvent) -> None:
        if isinstance(event, DataCommand):
            conn.send_reply(451, "4.3.0", "try later")
        else:
            conn.accept()

    _, replies = run(conn, TRANSACTION + b"NOOP\r\n", policy)
    assert [r.code for r in replies] == [250, 250, 250, 451, 250]
    assert conn.in_transaction  # DATA failing does not end the transaction


@pytest.mark.parametrize(
    ("content", "error", "expected"),
    [
        ((b"x" * 98 + b"\r\n") * 101, MessageTooLargeError, (552, "5.3.4")),
        (b"x" * 999 + b"\r\n", LineTooLongError, (550, "5.5.2")),
        (b"bare\nlf\r\n", BareLineEndingError, (550, "5.5.2")),
        (b"bare\rcr\r\n", BareLineEndingError, (550, "5.5.2")),
    ],
)
def test_data_errors_are_reported_and_the_session_continues(
    content: bytes, error: type[Exception], expected: tuple[int, str]
) -> None:
    conn = ready()
    run(conn, TRANSACTION)
    conn.receive_data(content + b".\r\nNOOP\r\n")
    event = conn.next_event()
    assert isinstance(event, DataFailed)
    assert isinstance(event.error, error)
    assert (event.code, event.enhanced) == expected
    with pytest.raises(LocalProtocolError):
        conn.accept()
    conn.send_reply(event.code, event.enhanced, event.text)
    _, replies = run(conn, b"")
    assert codes(replies) == [expected, (250, "2.0.0")]
    assert not conn.in_transaction


def test_line_of_exactly_1000_octets_is_accepted_rfc5321_4_5_3_1_6() -> None:
    conn = ready()
    run(conn, TRANSACTION)
    line = b"x" * 998 + b"\r\n"
    events, _ = run(conn, line + b".\r\n")
    assert events[0] == DataComplete(MailFrom("a@b.example"), ("x@y.example", "z@y.example"), line)


def test_bare_line_endings_may_be_normalized() -> None:
    conn = ready(ServerConfig(hostname="mx.test", bare_line_ending="normalize"))
    run(conn, TRANSACTION)
    events, _ = run(conn, b"a\nb\rc\r\n.\r\n")
    (event,) = events
    assert isinstance(event, DataComplete)
    assert event.content == b"a\r\nb\r\nc\r\n"


def test_end_of_input_during_data_closes() -> None:
    conn = ready()
    run(conn, TRANSACTION)
    conn.receive_data(b"partial")
    conn.receive_data(b"")
    assert conn.next_event() == ConnectionClosed("eof")


def test_end_of_input_after_buffered_commands() -> None:
    conn = greeted()
    conn.receive_data(b"NOOP\r\nNOOP")
    conn.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"more")
    events, replies = run(conn, b"")
    assert events == [ConnectionClosed("eof")]
    assert codes(replies) == [(250, "2.0.0")]


# --- replies from the caller ------------------------------------------------------------


def test_caller_misuse_is_a_local_protocol_error() -> None:
    conn = ready()
    with pytest.raises(LocalProtocolError):
        conn.accept()  # nothing pending
    conn.receive_data(b"MAIL FROM:<a@b.example>\r\nNOOP\r\n")
    assert isinstance(conn.next_event(), MailFrom)
    with pytest.raises(LocalProtocolError):
        conn.next_event()  # answer first
    with pytest.raises(LocalProtocolError):
        conn.send_reply(354, None, "not for MAIL")
    with pytest.raises(LocalProtocolError):
        conn.send_reply(550, "4.0.0", "class mismatch")
    conn.send_reply(550, "5.7.1", "sender rejected")
    assert conn.awaiting_reply is None
    _, replies = run(conn, b"")
    assert codes(replies) == [(550, "5.7.1"), (250, "2.0.0")]
    assert not conn.in_transaction


def test_421_reply_closes_rfc5321_3_8() -> None:
    conn = ready()
    conn.receive_data(b"MAIL FROM:<a@b.example>\r\nNOOP\r\n")
    conn.next_event()
    conn.send_reply(421, "4.3.2", "shutting down")
    assert conn.next_event() == ConnectionClosed("shutdown")
    assert parse_replies(conn.data_to_send())[0].code == 421


def test_unsolicited_shutdown_rfc5321_3_8() -> None:
    conn = ready()
    conn.shutdown("Timeout", enhanced="4.4.2")
    assert conn.data_to_send() == b"421 4.4.2 Timeout\r\n"
    assert conn.next_event() == ConnectionClosed("shutdown")


# --- STARTTLS --------------------------------------------------------------------------------


def test_starttls_then_reset_to_before_ehlo_rfc3207_4_2() -> None:
    conn = ready()
    run(conn, b"MAIL FROM:<a@b.example>\r\n")
    run(conn, b"RSET\r\n")
    events, replies = run(conn, b"STARTTLS\r\n", lambda c, e: None)
    assert events == [StartTLS()]
    conn.accept()
    assert conn.data_to_send() == b"220 2.0.0 Ready to start TLS\r\n"
    assert conn.phase == "tls"
    with pytest.raises(LocalProtocolError):
        conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"\x16\x03\x01")  # handshake bytes go to the TLS layer
    conn.tls_established()
    assert conn.tls_active and conn.hello_name is None
    _, replies = run(conn, b"MAIL FROM:<a@b.example>\r\nSTARTTLS\r\n")
    assert codes(replies) == [(503, "5.5.1"), (503, "5.5.1")]
    _, replies = run(conn, b"EHLO c\r\n")
    assert "STARTTLS" not in replies[0].lines


def test_starttls_with_pipelined_commands_is_a_remote_error_cve_2011_0411() -> None:
    conn = ready()
    conn.receive_data(b"STARTTLS\r\nMAIL FROM:<evil@x.example>\r\n")
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert (info.value.code, info.value.enhanced) == (554, "5.5.1")
    assert codes(parse_replies(conn.data_to_send())) == [(554, "5.5.1")]
    with pytest.raises(RemoteProtocolError):
        conn.next_event()  # never replayed as commands
    with pytest.raises(LocalProtocolError):
        conn.accept()


def test_starttls_with_bytes_arriving_before_the_reply_is_a_remote_error() -> None:
    conn = ready()
    conn.receive_data(b"STARTTLS\r\n")
    assert conn.next_event() == StartTLS()
    with pytest.raises(RemoteProtocolError):
        conn.receive_data(b"MAIL FROM:<evil@x.example>\r\n")
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


def test_partial_line_after_starttls_is_injection_too() -> None:
    conn = ready()
    conn.receive_data(b"STARTTLS\r\nM")
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


@pytest.mark.parametrize(
    ("config", "tls", "script", "expected"),
    [
        (CFG, True, b"EHLO c\r\nSTARTTLS\r\n", (503, "5.5.1")),
        (ServerConfig(hostname="mx.test"), False, b"EHLO c\r\nSTARTTLS\r\n", (502, "5.5.1")),
        (CFG, False, b"EHLO c\r\nSTARTTLS now\r\n", (501, "5.5.4")),  # RFC 3207 4
        (CFG, False, b"HELO c\r\nSTARTTLS\r\n", (503, "5.5.1")),
    ],
)
def test_starttls_refusals(
    config: ServerConfig, tls: bool, script: bytes, expected: tuple[int, str]
) -> None:
    _, replies = run(greeted(config, tls_active=tls), script)
    assert codes(replies)[-1] == expected


def test_starttls_refused_by_the_caller_keeps_plaintext() -> None:
    conn = ready()
    events, _ = run(
        conn, b"STARTTLS\r\n", lambda c, e: c.send_reply(454, "4.7.0", "TLS not available")
    )
    assert events == [StartTLS()]
    events, _ = run(conn, b"MAIL FROM:<a@b.example>\r\n")
    assert events == [MailFrom("a@b.example")]


def test_tls_required_for_mail_rfc3207_4() -> None:
    cfg = ServerConfig(hostname="mx.test", starttls=True, require_tls_for_mail=True)
    _, replies = run(ready(cfg), b"MAIL FROM:<a@b.example>\r\n")
    assert codes(replies) == [(530, "5.7.0")]
    events, _ = run(ready(cfg, tls_active=True), b"MAIL FROM:<a@b.example>\r\n")
    assert events == [MailFrom("a@b.example")]


# --- AUTH ---------------------------------------------------------------------------------------


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def test_auth_plain_with_initial_response_rfc4954_4() -> None:
    conn = ready()
    events, replies = run(conn, b"AUTH PLAIN " + b64(b"admin\0user\0secret") + b"\r\n")
    assert events == [AuthRequest("PLAIN", "user", "secret", "admin")]
    assert "secret" not in repr(events[0])
    assert codes(replies) == [(235, "2.7.0")]
    assert conn.authenticated_as == "user"
    _, replies = run(conn, b"AUTH PLAIN " + b64(b"\0user\0secret") + b"\r\n")
    assert codes(replies) == [(503, "5.5.1")]


def test_auth_plain_without_initial_response_rfc4954_4() -> None:
    conn = ready()
    events, replies = run(conn, b"AUTH plain\r\n")
    assert events == [] and replies == [Reply(334, None, ("",))]
    events, _ = run(conn, b64(b"\0user\0secret") + b"\r\n")
    assert events == [AuthRequest("PLAIN", "user", "secret")]


def test_auth_login_rfc4954_4() -> None:
    conn = ready()
    _, replies = run(conn, b"AUTH LOGIN\r\n")
    assert replies == [Reply(334, None, ("VXNlcm5hbWU6",))]
    _, replies = run(conn, b64("üser".encode()) + b"\r\n")
    assert replies == [Reply(334, None, ("UGFzc3dvcmQ6",))]
    events, _ = run(
        conn, b64(b"pw") + b"\r\n", lambda c, e: c.send_reply(535, "5.7.8", "bad credentials")
    )
    assert events == [AuthRequest("LOGIN", "üser", "pw")]
    assert conn.authenticated_as is None
    events, replies = run(conn, b"AUTH LOGIN " + b64(b"user") + b"\r\n" + b64(b"pw") + b"\r\n")
    assert events == [AuthRequest("LOGIN", "user", "pw")]
    assert [r.code for r in replies] == [334, 235]


def test_auth_cancel_and_bad_responses_rfc4954_4() -> None:
    conn = ready()
    _, replies = run(conn, b"AUTH LOGIN\r\n*\r\n")
    assert codes(replies) == [(334, None), (501, "5.0.0")]
    _, replies = run(conn, b"AUTH PLAIN\r\nnot base64!\r\n")
    assert codes(replies) == [(334, None), (501, "5.5.2")]
    _, replies = run(conn, b"AUTH PLAIN " + b64(b"no nuls") + b"\r\n")
    assert codes(replies) == [(501, "5.5.2")]
    _, replies = run(conn, b"AUTH PLAIN =\r\n")
    assert codes(replies) == [(501, "5.5.2")]
    _, replies = run(conn, b"AUTH CRAM-MD5\r\nAUTH\r\nAUTH PLAIN a b\r\n")
    assert codes(replies) == [(504, "5.5.4"), (501, "5.5.4"), (501, "5.5.4")]
    _, replies = run(conn, b"AUTH LOGIN\r\n" + b"A" * 13_000 + b"\r\nNOOP\r\n")
    assert codes(replies) == [(334, None), (500, "5.5.6"), (250, "2.0.0")]
    assert conn.authenticated_as is None


def test_auth_long_initial_response_is_allowed_rfc4954_4() -> None:
    conn = ready()
    password = b"p" * 5000
    events, _ = run(conn, b"AUTH PLAIN " + b64(b"\0user\0" + password) + b"\r\n")
    assert events == [AuthRequest("PLAIN", "user", password.decode())]


@pytest.mark.parametrize(
    ("config", "script", "expected"),
    [
        (ServerConfig(hostname="mx.test"), b"EHLO c\r\nAUTH PLAIN\r\n", (502, "5.5.1")),
        (CFG, b"HELO c\r\nAUTH PLAIN\r\n", (503, "5.5.1")),
        (CFG, b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nAUTH PLAIN\r\n", (503, "5.5.1")),
        (
            ServerConfig(hostname="mx.test", auth_mechanisms=("PLAIN",)),
            b"EHLO c\r\nAUTH PLAIN\r\n",
            (530, "5.7.0"),  # TLS required first (RFC 3207 4)
        ),
    ],
)
def test_auth_refusals(config: ServerConfig, script: bytes, expected: tuple[int, str]) -> None:
    _, replies = run(greeted(config), script)
    assert codes(replies)[-1] == expected


def test_auth_required_for_mail_rfc4954_6() -> None:
    cfg = ServerConfig(
        hostname="mx.test",
        auth_mechanisms=("PLAIN",),
        require_tls_for_auth=False,
        require_auth_for_mail=True,
    )
    conn = ready(cfg)
    _, replies = run(conn, b"MAIL FROM:<a@b.example>\r\n")
    assert codes(replies) == [(530, "5.7.0")]
    run(conn, b"AUTH PLAIN " + b64(b"\0u\0p") + b"\r\n")
    events, _ = run(conn, b"MAIL FROM:<a@b.example>\r\n")
    assert events == [MailFrom("a@b.example")]


# --- chunking: whole, byte by byte, with trailing data --------------------------------------

SESSION = (
    b"EHLO client.test\r\n"
    b"AUTH PLAIN " + b64(b"\0user\0pw") + b"\r\n"
    b"MAIL FROM:<a@b.example> SIZE=20\r\n"
    b"RCPT TO:<x@y.example>\r\n"
    b"RCPT TO:<bad@y.example>\r\n"
    b"DATA\r\n"
    b"Subject: x\r\n\r\n..dot\r\n\r\n.\r\n"
    b"NOOP\r\nFOO\r\n"
    b"MAIL FROM:<>\r\nRCPT TO:<z@y.example>\r\nDATA\r\n.\r\n"
    b"QUIT\r\n"
)


def session_policy(conn: ServerConnection, event: ServerEvent) -> None:
    if isinstance(event, RcptTo) and event.recipient.startswith("bad"):
        conn.send_reply(550, "5.1.1", "unknown")
    else:
        conn.accept()


def feed_in_chunks(chunks: list[bytes]) -> tuple[list[ServerEvent], bytes]:
    conn = greeted()
    events: list[ServerEvent] = []
    out = b""
    for chunk in chunks:
        evs: list[ServerEvent] = []
        conn.receive_data(chunk)
        while True:
            event = conn.next_event()
            if event is NEED_DATA or isinstance(event, ConnectionClosed):
                if isinstance(event, ConnectionClosed):
                    evs.append(event)
                break
            evs.append(event)
            session_policy(conn, event)
        events.extend(evs)
        out += conn.data_to_send()
        if events and isinstance(events[-1], ConnectionClosed):
            break
    return events, out


def test_session_fed_whole_byte_by_byte_and_with_trailing_data() -> None:
    whole = feed_in_chunks([SESSION])
    assert [type(e) for e in whole[0]] == [
        Hello,
        AuthRequest,
        MailFrom,
        RcptTo,
        RcptTo,
        DataCommand,
        DataComplete,
        MailFrom,
        RcptTo,
        DataCommand,
        DataComplete,
        ConnectionClosed,
    ]
    assert whole[0][6] == DataComplete(
        MailFrom("a@b.example", size=20), ("x@y.example",), b"Subject: x\r\n\r\n.dot\r\n\r\n"
    )
    assert whole[0][10] == DataComplete(MailFrom(""), ("z@y.example",), b"")
    by_byte = feed_in_chunks([SESSION[i : i + 1] for i in range(len(SESSION))])
    assert by_byte == whole
    trailing = feed_in_chunks([SESSION + b"NOOP\r\nMAIL FROM:<late@x.example>\r\n"])
    assert trailing == whole
    for cut in range(1, len(SESSION), 7):
        assert feed_in_chunks([SESSION[:cut], SESSION[cut:]]) == whole


def test_commands_arriving_while_the_caller_decides_keep_their_order() -> None:
    conn = ready()
    conn.receive_data(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\nRC")
    assert isinstance(conn.next_event(), MailFrom)
    conn.receive_data(b"PT TO:<z@y.example>\r\nDATA x\r\nBAD\r\n")  # while MAIL is pending
    conn.accept()
    assert conn.next_event() == RcptTo("x@y.example")
    conn.accept()
    assert conn.next_event() == RcptTo("z@y.example")
    conn.accept()
    assert conn.next_event() is NEED_DATA
    assert codes(parse_replies(conn.data_to_send())) == [
        (250, "2.1.0"),
        (250, "2.1.5"),
        (250, "2.1.5"),
        (501, "5.5.4"),
        (500, "5.5.2"),
    ]


def test_body_7bit_rfc6152() -> None:
    events, _ = run(ready(), b"MAIL FROM:<a@b.example> BODY=7bit\r\n")
    assert events == [MailFrom("a@b.example", body="7BIT")]


def test_misuse_of_greeting_tls_and_shutdown() -> None:
    conn = ServerConnection(CFG)
    with pytest.raises(LocalProtocolError):
        conn.send_greeting(code=250)
    conn.send_greeting()
    with pytest.raises(LocalProtocolError):
        conn.tls_established()
    run(conn, b"QUIT\r\n")
    conn.shutdown()  # already closed: nothing more is queued
    assert conn.data_to_send() == b""


@pytest.mark.parametrize(
    "kwargs",
    [
        {"hostname": ""},
        {"hostname": "a b"},
        {"auth_mechanisms": ("CRAM-MD5",)},
        {"bare_line_ending": "ignore"},
        {"max_recipients": 0},
        {"max_message_size": -1},
        {"command_line_limit": 100},
    ],
)
def test_invalid_configs(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ServerConfig(**kwargs)  # type: ignore[arg-type]


def test_junk_commands_beyond_the_limit_count_as_errors() -> None:
    # A client cycling NOOP/RSET/VRFY/HELP cannot hold a session open forever
    # (as Postfix's smtpd_junk_command_limit).
    conn = greeted(ServerConfig(hostname="mx.test", junk_command_limit=3, max_errors=2))
    events, replies = run(conn, b"EHLO c.test\r\n" + b"NOOP\r\n" * 3 + b"RSET\r\nVRFY x\r\n")
    codes = [r.code for r in replies]
    assert codes[:4] == [250, 250, 250, 250]
    assert codes[-1] == 421
    assert isinstance(events[-1], ConnectionClosed) and events[-1].reason == "errors"


@pytest.mark.parametrize("name", ["c\x00.test", "c\x1b[31m.test", "c\x7f.test", "c\t.test"])
def test_hello_name_with_control_characters_is_refused_rfc5321_4_1_1_1(name: str) -> None:
    conn = greeted()
    events, replies = run(conn, f"EHLO {name}\r\n".encode())
    assert [r.code for r in replies] == [501]
    assert not any(isinstance(e, Hello) for e in events)
