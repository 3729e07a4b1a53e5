"""What submission refuses, and that the session goes on (or ends) as it should."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog
import trio
from submission_support import (
    CLIENT_NAME,
    OTHER_PASSWORD,
    OTHER_USER,
    PASSWORD,
    USER,
    Harness,
    RawClient,
    authenticated_client,
    make_config,
    message,
    plain_response,
    running_service,
    send_message,
    tls_client,
)

from relay.ingest import IngestLimits


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_service(tmp_path) as h:
        yield h


# --- TLS and AUTH -------------------------------------------------------------------


async def test_no_auth_offered_and_auth_mail_refused_before_starttls_rfc3207(
    harness: Harness,
) -> None:
    client = await RawClient.connect(harness.submission_port)
    assert (await client.reply())[0] == 220
    code, _, lines = await client.command(f"EHLO {CLIENT_NAME}")
    assert code == 250 and "STARTTLS" in lines
    assert not any(line.startswith("AUTH") for line in lines)
    assert (await client.command(f"AUTH PLAIN {plain_response(USER, PASSWORD)}"))[:2] == (
        530,
        "5.7.0",
    )
    assert (await client.command("MAIL FROM:<news@acme.test>"))[:2] == (530, "5.7.0")
    assert (await client.command("QUIT"))[0] == 221


@pytest.mark.parametrize("port", ["submission", "submissions"])
async def test_relay_without_auth_refused_rfc4954_6(harness: Harness, port: str) -> None:
    if port == "submission":
        client = await tls_client(harness)
    else:
        stream = await trio.open_ssl_over_tcp_stream(
            "127.0.0.1", harness.submissions_port, ssl_context=harness.client_context()
        )
        client = RawClient(stream)
        assert (await client.reply())[0] == 220
        code, _, lines = await client.command(f"EHLO {CLIENT_NAME}")
        assert code == 250 and "AUTH PLAIN LOGIN" in lines and "STARTTLS" not in lines
    assert (await client.command("MAIL FROM:<news@acme.test>"))[:2] == (530, "5.7.0")
    assert (await client.command("RCPT TO:<x@example.net>"))[0] == 503
    assert harness.queued() == []
    await client.aclose()


async def test_bad_base64_in_auth_rfc4954_4(harness: Harness) -> None:
    client = await tls_client(harness)
    assert (await client.command("AUTH PLAIN not*base64!"))[:2] == (501, "5.5.2")
    assert (await client.command("AUTH LOGIN"))[0] == 334
    assert (await client.command("%%%"))[:2] == (501, "5.5.2")
    assert (await client.command("AUTH LOGIN"))[0] == 334
    assert (await client.command(base64.b64encode(USER.encode()).decode()))[0] == 334
    assert (await client.command("!!!"))[:2] == (501, "5.5.2")
    # still usable: the right credentials work
    code, _, _ = await client.command(f"AUTH PLAIN {plain_response(USER, PASSWORD)}")
    assert code == 235
    assert harness.service.statistics().auth_failures == 0
    await client.aclose()


async def test_wrong_password_slowed_then_locked_out_and_logged_without_password(
    tmp_path: Path,
) -> None:
    config = make_config(auth={"max_failures": 3, "failure_delay": 0.01, "lockout": 600.0})
    async with running_service(tmp_path, config) as harness:
        wrong = "hunter2-wrong"
        with structlog.testing.capture_logs() as logs:
            client = await tls_client(harness)
            for _ in range(3):
                reply = await client.command(f"AUTH PLAIN {plain_response(USER, wrong)}")
                assert reply[:2] == (535, "5.7.8")
            # locked: even the right password is refused, and the session closed
            reply = await client.command(f"AUTH PLAIN {plain_response(USER, PASSWORD)}")
            assert reply[:2] == (421, "4.7.0")
            assert await client.closed()
            # a new connection from the same address is still locked out
            client = await tls_client(harness)
            reply = await client.command(f"AUTH PLAIN {plain_response(OTHER_USER, OTHER_PASSWORD)}")
            assert reply[:2] == (421, "4.7.0")
        failures = [e for e in logs if e["event"] == "AUTH failed"]
        assert len(failures) == 3
        assert all(e["user"] == USER and e["peer"] == "127.0.0.1" for e in failures)
        assert failures[-1]["locked_out"] is True
        assert not any(wrong in repr(e) or PASSWORD in repr(e) for e in logs)
        stats = harness.service.statistics()
        assert (stats.auth_failures, stats.auth_lockouts) == (3, 2)


async def test_auth_unknown_user_and_foreign_authzid_refused(harness: Harness) -> None:
    client = await tls_client(harness)
    assert (await client.command(f"AUTH PLAIN {plain_response('nobody', PASSWORD)}"))[0] == 535
    as_other = base64.b64encode(f"{OTHER_USER}\0{USER}\0{PASSWORD}".encode()).decode()
    assert (await client.command(f"AUTH PLAIN {as_other}"))[:2] == (535, "5.7.8")
    await client.aclose()


async def test_bytes_pipelined_after_starttls_dropped_never_replayed_cve_2011_0411(
    harness: Harness,
) -> None:
    client = await RawClient.connect(harness.submission_port)
    assert (await client.reply())[0] == 220
    assert (await client.command(f"EHLO {CLIENT_NAME}"))[0] == 250
    await client.send(b"STARTTLS\r\nMAIL FROM:<news@acme.test>\r\n")
    code, enhanced, _ = await client.reply()
    assert (code, enhanced) == (554, "5.5.1")
    assert await client.closed()


async def test_cleartext_after_starttls_reply_is_not_read_as_commands(harness: Harness) -> None:
    client = await RawClient.connect(harness.submission_port)
    assert (await client.reply())[0] == 220
    assert (await client.command(f"EHLO {CLIENT_NAME}"))[0] == 250
    assert (await client.command("STARTTLS"))[0] == 220
    await client.send(b"EHLO injected.test\r\nMAIL FROM:<news@acme.test>\r\n")
    assert await client.closed()  # the TLS layer refused them; no SMTP reply came
    assert harness.service.statistics().tls_started == 0


# --- sender policy ------------------------------------------------------------------


async def test_mail_from_domain_of_another_customer_refused(harness: Harness) -> None:
    client = await authenticated_client(harness)
    assert (await client.command("MAIL FROM:<ceo@globex.test>"))[:2] == (553, "5.7.1")
    assert (await client.command("MAIL FROM:<>"))[:2] == (553, "5.7.1")
    assert (await client.command("MAIL FROM:<news@sub.acme.test>"))[:2] == (553, "5.7.1")
    assert (await client.command("MAIL FROM:<news@ACME.test>"))[0] == 250  # case-insensitive
    await client.aclose()


@pytest.mark.parametrize(
    ("from_header", "expected"),
    [
        ("From: ceo@globex.test", (550, "5.7.1")),
        ('From: "news@acme.test" <ceo@globex.test>', (550, "5.7.1")),
        ("From: news@acme.test, ceo@globex.test", (550, "5.7.1")),
        ("From: news@acme.test)<ceo@globex.test>", (550, "5.7.1")),
        ("From: undisclosed:;", (550, "5.7.1")),
    ],
)
async def test_header_from_domain_spoof_refused_after_data(
    harness: Harness, from_header: str, expected: tuple[int, str]
) -> None:
    client = await authenticated_client(harness)
    content = f"{from_header}\r\nTo: x@example.net\r\nSubject: s\r\n\r\nbody\r\n".encode()
    code, enhanced, _ = await send_message(client, content)
    assert (code, enhanced) == expected
    # the session goes on: a proper message is accepted
    code, _, _ = await send_message(client, message())
    assert code == 250
    assert len(harness.queued()) == 1
    await client.aclose()


async def test_missing_or_repeated_from_header_refused_rfc5322_3_6(harness: Harness) -> None:
    client = await authenticated_client(harness)
    no_from = b"To: x@example.net\r\nSubject: s\r\n\r\nbody\r\n"
    assert (await send_message(client, no_from))[:2] == (550, "5.6.0")
    two = b"From: news@acme.test\r\nFrom: ceo@globex.test\r\n\r\nbody\r\n"
    assert (await send_message(client, two))[:2] == (550, "5.6.0")
    assert harness.queued() == []
    await client.aclose()


async def test_unqualified_recipient_refused(harness: Harness) -> None:
    client = await authenticated_client(harness)
    assert (await client.command("MAIL FROM:<news@acme.test>"))[0] == 250
    assert (await client.command("RCPT TO:<postmaster>"))[:2] == (550, "5.1.3")
    await client.aclose()


# --- limits -------------------------------------------------------------------------


async def test_too_many_recipients_rfc5321_4_5_3_1_10(tmp_path: Path) -> None:
    config = make_config(submission={"max_recipients": 5})
    async with running_service(tmp_path, config) as harness:
        await harness.users.add(
            "small", "pw-small", tenant="small", sender_domains=("acme.test",), max_recipients=2
        )
        client = await authenticated_client(harness)
        assert (await client.command("MAIL FROM:<news@acme.test>"))[0] == 250
        codes = [(await client.command(f"RCPT TO:<r{i}@example.net>"))[:2] for i in range(7)]
        assert codes == [(250, "2.1.5")] * 5 + [(452, "4.5.3")] * 2
        assert (await client.command("DATA"))[0] == 354
        await client.send(b"From: news@acme.test\r\n\r\nhi\r\n.\r\n")
        assert (await client.reply())[0] == 250
        await client.aclose()
        # a user's own lower limit
        client = await authenticated_client(harness, "small", "pw-small")
        assert (await client.command("MAIL FROM:<news@acme.test>"))[0] == 250
        codes = [(await client.command(f"RCPT TO:<r{i}@example.net>"))[:2] for i in range(3)]
        assert codes == [(250, "2.1.5")] * 2 + [(452, "4.5.3")]
        await client.aclose()
        [(message_id, _)] = harness.queued()
        meta = harness.spool.get(message_id)
        assert meta is not None and len(meta.recipients) == 5


async def test_oversize_by_size_parameter_and_by_data_rfc1870(tmp_path: Path) -> None:
    config = make_config(submission={"max_message_size": 10_000})
    async with running_service(tmp_path, config) as harness:
        client = await authenticated_client(harness)
        code, _, lines = await client.command(f"EHLO {CLIENT_NAME}")
        assert code == 250 and "SIZE 10000" in lines
        reply = await client.command("MAIL FROM:<news@acme.test> SIZE=10001")
        assert reply[:2] == (552, "5.3.4")
        # no SIZE given (or a lie): the data itself is measured
        big = message(body=("y" * 76 + "\r\n") * 200)
        assert (await send_message(client, big))[:2] == (552, "5.3.4")
        assert (await client.command("MAIL FROM:<news@acme.test> SIZE=100"))[0] == 250
        assert (await client.command("RCPT TO:<x@example.net>"))[0] == 250
        assert (await client.command("DATA"))[0] == 354
        await client.send(big.replace(b"\r\n.", b"\r\n..") + b".\r\n")
        assert (await client.reply())[:2] == (552, "5.3.4")
        # the session goes on
        assert (await send_message(client, message()))[0] == 250
        await client.aclose()
        assert len(harness.queued()) == 1
        assert harness.service.budget.used == 0


async def test_user_size_limit_below_server_limit(tmp_path: Path) -> None:
    async with running_service(tmp_path) as harness:
        await harness.users.add(
            "tiny", "pw-tiny", tenant="t", sender_domains=("acme.test",), max_message_size=500
        )
        client = await authenticated_client(harness, "tiny", "pw-tiny")
        assert (await client.command("MAIL FROM:<news@acme.test> SIZE=501"))[:2] == (552, "5.3.4")
        assert (await send_message(client, message(body="z" * 600)))[:2] == (552, "5.3.4")
        await client.aclose()


async def test_user_message_rate_limit(tmp_path: Path) -> None:
    async with running_service(tmp_path) as harness:
        await harness.users.add(
            "slow", "pw-slow", tenant="t", sender_domains=("acme.test",), rate_per_minute=2
        )
        client = await authenticated_client(harness, "slow", "pw-slow")
        assert (await send_message(client, message()))[0] == 250
        assert (await send_message(client, message()))[0] == 250
        assert (await client.command("MAIL FROM:<news@acme.test>"))[:2] == (450, "4.7.1")
        await client.aclose()


async def test_messages_per_connection_limit(tmp_path: Path) -> None:
    config = make_config(submission={"max_messages_per_connection": 2})
    async with running_service(tmp_path, config) as harness:
        client = await authenticated_client(harness)
        for _ in range(2):
            assert (await send_message(client, message()))[0] == 250
        assert (await client.command("MAIL FROM:<news@acme.test>"))[:2] == (421, "4.7.0")
        assert await client.closed()


async def test_errors_before_disconnect(tmp_path: Path) -> None:
    config = make_config(submission={"max_errors": 3})
    async with running_service(tmp_path, config) as harness:
        client = await tls_client(harness)
        assert (await client.command("BOGUS"))[0] == 500
        assert (await client.command("RCPT TO:<x@example.net>"))[0] == 503
        await client.send(b"BOGUS\r\n")
        assert [r[0] for r in await client.replies(2)] == [500, 421]
        assert await client.closed()


async def test_vrfy_252_expn_502_unknown_500_no_user_enumeration(harness: Harness) -> None:
    client = await tls_client(harness)
    assert (await client.command(f"VRFY {USER}"))[0] == 252
    assert (await client.command("EXPN staff"))[0] == 502
    assert (await client.command("XYZZY"))[0] == 500
    await client.aclose()


async def test_over_long_lines_rfc5321_4_5_3_1(harness: Harness) -> None:
    client = await authenticated_client(harness)
    assert (await client.command("NOOP " + "x" * 600))[:2] == (500, "5.5.2")
    long_line = message(body="a" * 1200 + "\r\n")
    assert (await send_message(client, long_line))[:2] == (550, "5.5.2")
    assert (await send_message(client, message()))[0] == 250
    assert len(harness.queued()) == 1
    await client.aclose()


async def test_nul_bytes_refused(harness: Harness) -> None:
    client = await authenticated_client(harness)
    assert (await client.command("EHLO bad\0name"))[:2] == (501, "5.5.4")
    assert (await client.command(f"EHLO {CLIENT_NAME}"))[0] == 250
    assert (await client.command("MAIL FROM:<news\0x@acme.test>"))[0] == 501
    with_nul = message(body="before\0after\r\n")
    assert (await send_message(client, with_nul))[:2] == (550, "5.6.0")
    assert harness.queued() == []
    await client.aclose()


# --- SMTP smuggling ------------------------------------------------------------------

SMUGGLED = (
    b"From: news@acme.test\r\nTo: a@example.net\r\nSubject: first\r\n\r\nbody\r\n"
    + b"\n.\nMAIL FROM:<ceo@globex.test>\nRCPT TO:<victim@example.net>\nDATA\n"
    + b"From: ceo@globex.test\n\nsmuggled 1\n"
    + b"\r.\r\nMAIL FROM:<ceo@globex.test>\r\n"
    + b"\n.\r\nRCPT TO:<victim@example.net>\r\n"
    + b"\r\n.\nDATA\r\n"
    + b"\r\n.\rsmuggled 2\r\n"
)


async def test_smuggled_end_of_data_normalized_exactly_one_message(tmp_path: Path) -> None:
    config = make_config(submission={"bare_line_ending": "normalize"})
    async with running_service(tmp_path, config) as harness:
        client = await authenticated_client(harness)
        assert (await client.command("MAIL FROM:<news@acme.test>"))[0] == 250
        assert (await client.command("RCPT TO:<a@example.net>"))[0] == 250
        assert (await client.command("DATA"))[0] == 354
        await client.send(SMUGGLED + b"\r\n.\r\n")
        code, _, _ = await client.reply()
        assert code == 250
        assert (await client.command("QUIT"))[0] == 221
        [(message_id, content)] = harness.queued()
        assert b"smuggled 1" in content and b"smuggled 2" in content
        meta = harness.spool.get(message_id)
        assert meta is not None and meta.sender == "news@acme.test"
        assert [r.address for r in meta.recipients] == ["a@example.net"]


async def test_smuggled_end_of_data_rejected_nothing_stored(harness: Harness) -> None:
    client = await authenticated_client(harness)
    assert (await client.command("MAIL FROM:<news@acme.test>"))[0] == 250
    assert (await client.command("RCPT TO:<a@example.net>"))[0] == 250
    assert (await client.command("DATA"))[0] == 354
    await client.send(SMUGGLED + b"\r\n.\r\n")
    assert (await client.reply())[:2] == (550, "5.5.2")  # bare CR/LF refused
    assert (await client.command("NOOP"))[0] == 250  # nothing smuggled got a reply
    assert harness.queued() == []
    await client.aclose()


# --- greeting, timeouts, stop ----------------------------------------------------------


async def test_early_talker_refused_and_disconnected_rfc5321_4_3_1(tmp_path: Path) -> None:
    config = make_config(submission={"greeting_delay": 2.0})
    async with running_service(tmp_path, config) as harness:
        client = await RawClient.connect(harness.submission_port)
        await client.send(f"EHLO {CLIENT_NAME}\r\n".encode())
        assert (await client.reply())[0] == 554
        assert await client.closed()
        assert harness.service.statistics().early_talkers == 1
        # a patient client is served
        client = await RawClient.connect(harness.submission_port)
        assert (await client.reply())[0] == 220
        await client.aclose()


async def test_idle_client_dropped_rfc5321_4_5_3_2(tmp_path: Path) -> None:
    config = make_config(submission={"command_timeout": 0.5})
    async with running_service(tmp_path, config) as harness:
        client = await RawClient.connect(harness.submission_port)
        assert (await client.reply())[0] == 220
        assert (await client.reply())[:2] == (421, "4.4.2")
        assert await client.closed()


async def test_trickling_client_dropped_at_the_command_deadline(tmp_path: Path) -> None:
    config = make_config(submission={"command_timeout": 1.0})
    async with running_service(tmp_path, config) as harness:
        client = await RawClient.connect(harness.submission_port)
        assert (await client.reply())[0] == 220
        got = None
        with trio.move_on_after(30):
            async with trio.open_nursery() as nursery:

                async def trickle() -> None:
                    for byte in b"EHLO " + b"x" * 400:
                        await client.send(bytes([byte]))
                        await trio.sleep(0.05)

                nursery.start_soon(trickle)
                got = await client.reply()
                nursery.cancel_scope.cancel()
        assert got is not None and got[:2] == (421, "4.4.2")


async def test_data_timeout_drops_silent_client(tmp_path: Path) -> None:
    config = make_config(submission={"data_timeout": 0.5})
    async with running_service(tmp_path, config) as harness:
        client = await authenticated_client(harness)
        assert (await client.command("MAIL FROM:<news@acme.test>"))[0] == 250
        assert (await client.command("RCPT TO:<x@example.net>"))[0] == 250
        assert (await client.command("DATA"))[0] == 354
        await client.send(b"From: news@acme.test\r\n\r\npartial")
        assert (await client.reply())[:2] == (421, "4.4.2")
        assert await client.closed()
        assert harness.queued() == []
        with trio.fail_after(10):
            while harness.service.budget.used:
                await trio.sleep(0.01)


async def test_stop_sends_421_to_idle_sessions(tmp_path: Path) -> None:
    async with running_service(tmp_path) as harness:
        client = await authenticated_client(harness)
        harness.service.stop(grace=5)
        assert (await client.reply())[:2] == (421, "4.3.2")
        assert await client.closed()
        with trio.fail_after(10):
            await harness.service.stopped.wait()  # serve() returned: nothing left running


async def test_stop_lets_a_message_in_progress_finish(tmp_path: Path) -> None:
    async with running_service(tmp_path) as harness:
        client = await authenticated_client(harness)
        assert (await client.command("MAIL FROM:<news@acme.test>"))[0] == 250
        assert (await client.command("RCPT TO:<x@example.net>"))[0] == 250
        assert (await client.command("DATA"))[0] == 354
        content = message()
        await client.send(content[:20])
        harness.service.stop(grace=20)
        await client.send(content[20:] + b".\r\n")
        assert (await client.reply())[0] == 250  # stored and acknowledged
        assert (await client.reply())[:2] == (421, "4.3.2")  # then the session ends
        assert await client.closed()
        assert len(harness.queued()) == 1


async def test_connection_limit_per_address_answers_421(tmp_path: Path) -> None:
    config = make_config(submission={"max_connections_per_ip": 2})
    async with running_service(tmp_path, config) as harness:
        held = [await RawClient.connect(harness.submission_port) for _ in range(2)]
        for client in held:
            assert (await client.reply())[0] == 220
        extra = await RawClient.connect(harness.relay_port)  # limits span every port
        assert (await extra.reply())[0] == 421
        assert await extra.closed()


# --- spool and ingest failures -----------------------------------------------------


async def test_spool_full_452_4_3_1_and_session_goes_on(tmp_path: Path) -> None:
    async with running_service(tmp_path, map_size=2 << 20) as harness:
        client = await authenticated_client(harness)
        body = ("z" * 76 + "\r\n") * 2000  # ~156 KB per message
        replies = []
        for _ in range(30):
            reply = await send_message(client, message(body=body))
            replies.append(reply[:2])
            if reply[0] != 250:
                break
        assert replies[-1] == (452, "4.3.1")
        assert (await client.command("NOOP"))[0] == 250
        assert (await client.command("RSET"))[0] == 250
        assert (await client.command("QUIT"))[0] == 221
        stored = harness.queued()
        assert len(stored) == len(replies) - 1  # every 250 is in the spool, nothing else
        assert harness.service.statistics().spool_errors == 1


async def test_message_data_memory_is_bounded_across_sessions(tmp_path: Path) -> None:
    # Each DATA without SIZE= reserves up to the size limit; the budget (the smallest
    # allowed: twice the limit plus a read) holds three such reservations, not four.
    config = make_config(submission={"max_message_size": 100_000, "command_timeout": 2.0})
    async with running_service(tmp_path, config, data_memory=1) as harness:
        budget = harness.service.budget
        clients = []
        for _ in range(3):
            client = await authenticated_client(harness)
            assert (await client.command("MAIL FROM:<news@acme.test>"))[0] == 250
            assert (await client.command("RCPT TO:<x@example.net>"))[0] == 250
            assert (await client.command("DATA"))[0] == 354
            clients.append(client)
        late = await authenticated_client(harness)
        assert (await late.command("MAIL FROM:<news@acme.test>"))[0] == 250
        assert (await late.command("RCPT TO:<x@example.net>"))[0] == 250
        assert (await late.command("DATA"))[:2] == (452, "4.3.1")  # no room: try later
        assert budget.used <= budget.capacity
        await clients[0].send(message() + b".\r\n")
        assert (await clients[0].reply())[0] == 250
        assert (await late.command("DATA"))[0] == 354  # room again
        await late.send(message() + b".\r\n")
        assert (await late.reply())[0] == 250
        for client in [*clients, late]:
            await client.aclose()
        with trio.fail_after(10):
            while budget.used:
                await trio.sleep(0.01)
        assert harness.service.statistics().budget_waits == 1


async def test_ingest_limits_apply_below_submission_limits(tmp_path: Path) -> None:
    limits = IngestLimits(max_message_size=2000, max_recipients=3)
    async with running_service(tmp_path, ingest_limits=limits) as harness:
        client = await authenticated_client(harness)
        code, _, lines = await client.command(f"EHLO {CLIENT_NAME}")
        assert code == 250 and "SIZE 2000" in lines
        assert (await client.command("MAIL FROM:<news@acme.test>"))[0] == 250
        codes = [(await client.command(f"RCPT TO:<r{i}@example.net>"))[0] for i in range(4)]
        assert codes == [250, 250, 250, 452]
        await client.aclose()
