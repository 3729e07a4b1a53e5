"""Python's smtplib as a real client: STARTTLS + AUTH on 587, SMTP_SSL on 465."""

from __future__ import annotations

import base64
import re
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from submission_support import (
    CLIENT_NAME,
    PASSWORD,
    USER,
    Harness,
    RawClient,
    authenticated_client,
    make_config,
    message,
    running_service,
    send_message,
    smtp,
    smtp_ssl,
)

from relay.ingest import header_value, header_values
from relay.testing.tls import make_ca, write_server_certificate

QUEUED = re.compile(r"Ok: queued as ([0-9A-Z]{26})")


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_service(tmp_path) as h:
        yield h


def queued_id(reply: bytes | str) -> str:
    text = reply.decode() if isinstance(reply, bytes) else reply
    m = QUEUED.search(text)
    assert m, text
    return m.group(1)


@pytest.mark.parametrize(
    ("mechanism", "initial_response"), [("PLAIN", True), ("LOGIN", False), ("LOGIN", True)]
)
async def test_starttls_then_auth_rfc3207_rfc4954(
    harness: Harness, mechanism: str, initial_response: bool
) -> None:
    def session() -> tuple[dict[str, str], dict[str, str], tuple[int, bytes]]:
        with smtp(harness.submission_port) as client:
            client.ehlo()
            before = dict(client.esmtp_features)
            client.starttls(context=harness.client_context())
            client.ehlo()
            after = dict(client.esmtp_features)
            client.user, client.password = USER, PASSWORD
            authobject = client.auth_plain if mechanism == "PLAIN" else client.auth_login
            code, _ = client.auth(mechanism, authobject, initial_response_ok=initial_response)
            assert code == 235
            client.mail("news@acme.test")
            client.rcpt("someone@example.net")
            reply = client.data(message(subject=mechanism))
            return before, after, reply

    before, after, (code, text) = await trio.to_thread.run_sync(session)
    assert "starttls" in before and "auth" not in before  # AUTH never offered in cleartext
    assert "starttls" not in after and after["auth"].split() == ["PLAIN", "LOGIN"]
    assert after["size"] == str(harness.config.submission.max_message_size)
    assert "pipelining" in after
    assert code == 250
    message_id = queued_id(text)
    content = harness.spool.read_content(message_id)
    received = header_value(content, "Received")
    assert received is not None
    assert received.startswith(f"from {CLIENT_NAME} ([127.0.0.1]) by relay.test")
    assert "with ESMTPSA id " + message_id in received  # RFC 3848
    assert "(using TLSv1." in received and "with cipher" in received
    meta = harness.spool.get(message_id)
    assert meta is not None and meta.tenant == "acme-tenant"
    assert meta.sender == "news@acme.test"
    assert [r.address for r in meta.recipients] == ["someone@example.net"]


async def test_implicit_tls_rfc8314_several_messages_many_recipients(harness: Harness) -> None:
    recipients = [f"user{i}@dest{i % 7}.example" for i in range(150)]

    def session() -> list[tuple[str, dict[str, tuple[int, bytes]]]]:
        results = []
        with smtp_ssl(harness.submissions_port, harness.client_context()) as client:
            client.ehlo()
            assert "starttls" not in client.esmtp_features
            client.login(USER, PASSWORD)
            for i in range(5):
                refused = client.sendmail(
                    "news@acme.test", recipients, message(subject=f"message {i}")
                )
                results.append((f"message {i}", refused))
        return results

    results = await trio.to_thread.run_sync(session)
    assert all(refused == {} for _, refused in results)
    queued = harness.queued()
    assert len(queued) == 5
    subjects = sorted(header_value(content, "Subject") or "" for _, content in queued)
    assert subjects == [f"message {i}" for i in range(5)]
    for message_id, content in queued:
        meta = harness.spool.get(message_id)
        assert meta is not None and len(meta.recipients) == 150
        assert "with ESMTPSA" in (header_value(content, "Received") or "")
        assert header_value(content, "Message-ID") is not None  # added: none was given
        assert header_value(content, "Date") is not None


async def test_reply_id_matches_spool_and_headers_prepended(harness: Harness) -> None:
    body = "line one\r\n.starts with a dot\r\n..two dots\r\n"
    content_in = message(body=body, extra_headers=["Message-ID: <given@acme.test>"])

    def session() -> tuple[int, bytes]:
        with smtp(harness.submission_port) as client:
            client.starttls(context=harness.client_context())
            client.login(USER, PASSWORD)
            client.mail("news@acme.test")
            client.rcpt("someone@example.net")
            return client.data(content_in)

    code, text = await trio.to_thread.run_sync(session)
    assert code == 250
    message_id = queued_id(text)
    [(stored_id, stored)] = harness.queued()
    assert stored_id == message_id
    assert stored.startswith(b"Received: ")
    assert stored.endswith(content_in)  # the client's message, un-stuffed, unchanged
    assert header_values(stored, "Message-ID") == ["<given@acme.test>"]


async def test_control_headers_set_campaign_and_are_stripped(harness: Harness) -> None:
    content_in = message(extra_headers=["X-Campaign: spring-sale", "X-Tenant: someone-else"])

    def session() -> tuple[int, bytes]:
        with smtp(harness.submission_port) as client:
            client.starttls(context=harness.client_context())
            client.login(USER, PASSWORD)
            client.mail("news@acme.test")
            client.rcpt("someone@example.net")
            return client.data(content_in)

    code, text = await trio.to_thread.run_sync(session)
    assert code == 250
    message_id = queued_id(text)
    meta = harness.spool.get(message_id)
    assert meta is not None
    assert meta.campaign == "spring-sale"
    assert meta.tenant == "acme-tenant"  # the header is not trusted by default
    stored = harness.spool.read_content(message_id)
    assert header_value(stored, "X-Campaign") is None
    assert header_value(stored, "X-Tenant") is None


async def test_pipelined_group_in_one_write_gets_every_reply_rfc2920(harness: Harness) -> None:
    client = await RawClient.connect(harness.submission_port)
    assert (await client.reply())[0] == 220
    assert (await client.command("EHLO client.test"))[0] == 250
    await client.starttls(harness.client_context())
    code, _, lines = await client.command("EHLO client.test")
    assert code == 250 and "PIPELINING" in lines
    plain = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
    assert (await client.command(f"AUTH PLAIN {plain}"))[0] == 235
    rcpts = [f"r{i}@example.net" for i in range(20)]
    group = (
        "MAIL FROM:<news@acme.test>\r\n" + "".join(f"RCPT TO:<{r}>\r\n" for r in rcpts) + "DATA\r\n"
    )
    await client.send(group.encode())  # RFC 2920 3.1: one write, replies in order
    replies = await client.replies(22)
    assert [r[0] for r in replies] == [250] + [250] * 20 + [354]
    # The message, the next transaction and QUIT in one more write.
    await client.send(
        message().replace(b"\r\n.", b"\r\n..")
        + b".\r\nMAIL FROM:<news@acme.test>\r\nRCPT TO:<x@example.net>\r\nNOOP\r\nRSET\r\nQUIT\r\n"
    )
    replies = await client.replies(6)
    assert [r[0] for r in replies] == [250, 250, 250, 250, 250, 221]
    assert "queued as" in replies[0][2][0]
    assert await client.closed()
    assert len(harness.queued()) == 1


async def test_certificate_reload_keeps_live_sessions(harness: Harness) -> None:
    client = await authenticated_client(harness)
    new_ca = make_ca()
    write_server_certificate(new_ca, harness.tls_files.cert_file.parent)  # same file names
    harness.tls_store.reload()  # what the application does on SIGHUP
    assert (await send_message(client, message()))[0] == 250  # the live session goes on
    await client.aclose()
    new_context = ssl.create_default_context(cadata=new_ca.cert_pem.bytes().decode())
    fresh = await RawClient.connect(harness.submission_port)
    assert (await fresh.reply())[0] == 220
    assert (await fresh.command(f"EHLO {CLIENT_NAME}"))[0] == 250
    await fresh.starttls(new_context)  # new connections get the new certificate
    assert (await fresh.command(f"EHLO {CLIENT_NAME}"))[0] == 250
    await fresh.aclose()
    stale = await RawClient.connect(harness.submission_port)
    assert (await stale.reply())[0] == 220
    assert (await stale.command(f"EHLO {CLIENT_NAME}"))[0] == 250
    with pytest.raises(trio.BrokenResourceError):
        await stale.starttls(harness.client_context())  # the old CA no longer matches
    await stale.aclose()


async def test_require_tls_off_allows_auth_in_cleartext_rfc4954(tmp_path: Path) -> None:
    config = make_config(submission={"require_tls": False})
    async with running_service(tmp_path, config) as harness:

        def session() -> tuple[dict[str, str], tuple[int, bytes]]:
            with smtp(harness.submission_port) as client:
                client.ehlo()
                features = dict(client.esmtp_features)
                client.login(USER, PASSWORD)
                client.mail("news@acme.test")
                client.rcpt("someone@example.net")
                return features, client.data(message())

        features, (code, text) = await trio.to_thread.run_sync(session)
        assert "auth" in features and "starttls" in features
        assert code == 250
        content = harness.spool.read_content(queued_id(text))
        assert "with ESMTPA id" in (header_value(content, "Received") or "")
