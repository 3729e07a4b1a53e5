"""End to end: mail submitted over SMTP reaches the MX signed, and dkimpy accepts it."""

from __future__ import annotations

import smtplib
import ssl
from pathlib import Path

import trio
from dkim_support import signature_tags, signed_names, verify_each

from relay.app import Shard, run_shard
from relay.config import (
    Config,
    DeliveryConfig,
    DkimConfig,
    RouteConfig,
    ServerConfig,
    SubmissionConfig,
)
from relay.dkim import SigningKey, key_path, private_key_pem
from relay.loadgen import SinkConfig, open_sink

PASSWORD = "correct horse battery"


def submit(port: int, messages: list[tuple[str, bytes]]) -> None:
    """Send each (envelope sender, content) over STARTTLS + AUTH with smtplib."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the generated self-signed certificate
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30) as smtp:
        smtp.starttls(context=context)
        smtp.login("app", PASSWORD)
        for sender, content in messages:
            smtp.sendmail(sender, ["user@example.test"], content)


async def test_smtp_submitted_mail_arrives_signed(
    tmp_path: Path, rsa_key: SigningKey, ed_key: SigningKey
) -> None:
    for key in (rsa_key, ed_key):
        path = key_path(tmp_path / "dkim", key.domain, key.selector, key.algorithm)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(private_key_pem(key.private_key))
    signed_msg = (
        b"From: Shop <news@shop.test>\r\nTo: user@example.test\r\nSubject: sale\r\n"
        b"List-Unsubscribe: <https://shop.test/u>\r\n\r\nline one\r\n.starts with a dot\r\n"
    )
    unsigned_msg = b"From: someone@elsewhere.test\r\nSubject: no key\r\n\r\nhello\r\n"
    async with open_sink(SinkConfig(host="127.0.0.1", port=0, record_content=True)) as sink:
        cfg = Config(
            server=ServerConfig(
                hostname="relay.test", data_dir=str(tmp_path / "data"), shutdown_grace=5.0
            ),
            submission=SubmissionConfig(listen=("127.0.0.1:0",), listen_tls=()),
            delivery=DeliveryConfig(nameservers=("127.0.0.1",), retry_min=1.0, retry_max=2.0),
            routes=(RouteConfig(domain="*", host="127.0.0.1", port=sink.port, tls="disabled"),),
            dkim=DkimConfig(key_dir=str(tmp_path / "dkim")),
        )
        async with trio.open_nursery() as nursery:
            shard: Shard = await nursery.start(
                lambda task_status: run_shard(cfg, task_status=task_status, handle_signals=False)
            )
            await shard.users.add(
                "app", PASSWORD, tenant="shop", sender_domains=("shop.test", "elsewhere.test")
            )
            port = shard.submission.addresses[next(iter(shard.submission.addresses))][0].port
            batch = [("bounces@shop.test", signed_msg)] * 3 + [("x@elsewhere.test", unsigned_msg)]
            await trio.to_thread.run_sync(submit, port, batch)
            await sink.wait_for(4, timeout=60)
            assert shard.dkim is not None
            assert shard.dkim.statistics.signed == 3
            assert shard.dkim.statistics.unsigned == 1
            shard.stop()
        records = list(sink.records)
    assert len(records) == 4
    contents = [r.content or b"" for r in records]
    signed = [c for c in contents if c.startswith(b"DKIM-Signature:")]
    assert len(signed) == 3
    for content in signed:
        assert verify_each(content, rsa_key, ed_key) == [True, True]
        assert b"\r\n.starts with a dot\r\n" in content
        names = signed_names(signature_tags(content)[0])
        assert b"received" not in names
        assert {b"from", b"to", b"subject", b"list-unsubscribe", b"message-id", b"date"} <= set(
            names
        )
    (unsigned,) = [c for c in contents if not c.startswith(b"DKIM-Signature:")]
    assert b"DKIM-Signature" not in unsigned
