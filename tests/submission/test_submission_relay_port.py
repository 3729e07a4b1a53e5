"""The optional port-25 listener: trusted networks relay without AUTH, nobody else."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from submission_support import (
    CLIENT_NAME,
    Harness,
    RawClient,
    make_config,
    message,
    running_service,
    send_message,
)

from relay.ingest import header_value


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    # Only 127.0.0.1 is trusted; a client bound to 127.0.0.2 is a stranger.
    config = make_config(trusted=("127.0.0.1/32", "::1/128"), submission={"max_errors": 3})
    async with running_service(tmp_path, config) as h:
        yield h


async def test_trusted_network_relays_without_auth(harness: Harness) -> None:
    client = await RawClient.connect(harness.relay_port, local_address="127.0.0.1")
    assert (await client.reply())[0] == 220
    code, _, lines = await client.command(f"EHLO {CLIENT_NAME}")
    assert code == 250 and not any(line.startswith("AUTH") for line in lines)
    content = message(sender="alerts@anything.example", extra_headers=["X-Campaign: ops"])
    code, _, texts = await send_message(client, content, sender="alerts@anything.example")
    assert code == 250
    assert (await client.command("QUIT"))[0] == 221
    [(message_id, stored)] = harness.queued()
    assert message_id in texts[0]
    received = header_value(stored, "Received") or ""
    assert "with ESMTP id" in received and "using" not in received  # no TLS, no AUTH
    meta = harness.spool.get(message_id)
    assert meta is not None and meta.campaign == "ops" and meta.tenant == ""


async def test_trusted_network_with_starttls_is_esmtps(harness: Harness) -> None:
    client = await RawClient.connect(harness.relay_port)
    assert (await client.reply())[0] == 220
    assert (await client.command(f"EHLO {CLIENT_NAME}"))[0] == 250
    await client.starttls(harness.client_context())
    assert (await client.command(f"EHLO {CLIENT_NAME}"))[0] == 250
    assert (await send_message(client, message()))[0] == 250
    [(_, stored)] = harness.queued()
    assert "with ESMTPS id" in (header_value(stored, "Received") or "")
    await client.aclose()


async def test_untrusted_client_refused_554_5_7_1_never_an_open_relay(harness: Harness) -> None:
    client = await RawClient.connect(harness.relay_port, local_address="127.0.0.2")
    assert (await client.reply())[0] == 220
    assert (await client.command(f"EHLO {CLIENT_NAME}"))[0] == 250
    assert (await client.command("MAIL FROM:<news@acme.test>"))[:2] == (554, "5.7.1")
    assert (await client.command("RCPT TO:<victim@example.net>"))[0] == 503
    assert (await client.command("DATA"))[0] == 503
    assert (await client.command("AUTH PLAIN AHVzZXIAcGFzcw=="))[0] == 502  # no AUTH here
    assert harness.queued() == []
    await client.aclose()


async def test_untrusted_client_repeating_is_disconnected(harness: Harness) -> None:
    client = await RawClient.connect(harness.relay_port, local_address="127.0.0.2")
    assert (await client.reply())[0] == 220
    assert (await client.command(f"EHLO {CLIENT_NAME}"))[0] == 250
    await client.send(b"MAIL FROM:<a@x.test>\r\nMAIL FROM:<a@x.test>\r\nMAIL FROM:<a@x.test>\r\n")
    replies = await client.replies(4)
    assert [r[0] for r in replies] == [554, 554, 554, 421]
    assert await client.closed()
    assert harness.service.statistics().refusals == 3


async def test_trusted_address_still_needs_auth_on_submission_port(harness: Harness) -> None:
    client = await RawClient.connect(harness.submission_port, local_address="127.0.0.1")
    assert (await client.reply())[0] == 220
    assert (await client.command(f"EHLO {CLIENT_NAME}"))[0] == 250
    await client.starttls(harness.client_context())
    assert (await client.command(f"EHLO {CLIENT_NAME}"))[0] == 250
    assert (await client.command("MAIL FROM:<news@acme.test>"))[:2] == (530, "5.7.0")
    await client.aclose()
