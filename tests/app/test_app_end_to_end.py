"""relay end to end in one process: authenticated submission -> spool -> delivery -> MX."""

from __future__ import annotations

import dataclasses
import smtplib
import ssl
from pathlib import Path

import trio

from relay.app import Shard, run_shard
from relay.config import Config, DeliveryConfig, RouteConfig, ServerConfig, SubmissionConfig
from relay.loadgen import SinkConfig, open_sink


def demo_config(tmp_path: Path, sink_port: int) -> Config:
    return Config(
        server=ServerConfig(
            hostname="relay.test", data_dir=str(tmp_path / "data"), shutdown_grace=5.0
        ),
        submission=SubmissionConfig(listen=("127.0.0.1:0",), listen_tls=("127.0.0.1:0",)),
        delivery=DeliveryConfig(nameservers=("127.0.0.1",), retry_min=1.0, retry_max=2.0),
        routes=(RouteConfig(domain="*", host="127.0.0.1", port=sink_port, tls="disabled"),),
    )


def submit(port: int, password: str, count: int) -> list[str]:
    """Send `count` messages over STARTTLS + AUTH with smtplib (a real client)."""
    replies = []
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the generated self-signed certificate
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30) as smtp:
        smtp.starttls(context=context)
        smtp.login("app", password)
        for i in range(count):
            msg = (
                f"From: news@shop.test\r\nTo: user{i}@example.test\r\n"
                f"Subject: hello {i}\r\n\r\nline one\r\n.starts with a dot\r\n"
            )
            smtp.mail("news@shop.test")
            smtp.rcpt(f"user{i}@example.test")
            code, text = smtp.data(msg.encode())
            assert code == 250, (code, text)
            replies.append(text.decode())
    return replies


async def test_submitted_mail_is_delivered_to_the_route(tmp_path: Path) -> None:
    async with open_sink(SinkConfig(host="127.0.0.1", port=0, record_content=True)) as sink:
        cfg = demo_config(tmp_path, sink.port)
        async with trio.open_nursery() as nursery:
            shard: Shard = await nursery.start(
                lambda task_status: run_shard(cfg, task_status=task_status, handle_signals=False)
            )
            await shard.users.add(
                "app", "correct horse battery", tenant="shop", sender_domains=("shop.test",)
            )
            port = shard.submission.addresses[next(iter(shard.submission.addresses))][0].port
            replies = await trio.to_thread.run_sync(submit, port, "correct horse battery", 20)
            await sink.wait_for(20, timeout=60)
            shard.stop()
        records = list(sink.records)
    assert len(records) == 20
    queue_ids = {r.split()[-1] for r in replies}
    assert len(queue_ids) == 20
    for record in records:
        assert record.sender == "news@shop.test"
        content = record.content or b""
        assert content.startswith(b"Received: from client.test")
        assert b"\r\n.starts with a dot\r\n" in content  # transparency both ways (RFC 5321 4.5.2)
        assert b"Message-ID: <" in content


async def test_queue_survives_restart(tmp_path: Path) -> None:
    """Accepted while the destination is down; delivered after a restart."""
    cfg = demo_config(tmp_path, 1)  # port 1 on loopback: connection refused
    cfg = dataclasses.replace(
        cfg, routes=(RouteConfig(domain="*", host="127.0.0.1", port=1, tls="disabled"),)
    )
    async with trio.open_nursery() as nursery:
        shard: Shard = await nursery.start(
            lambda task_status: run_shard(cfg, task_status=task_status, handle_signals=False)
        )
        await shard.users.add(
            "app", "correct horse battery", tenant="shop", sender_domains=("shop.test",)
        )
        port = shard.submission.addresses[next(iter(shard.submission.addresses))][0].port
        await trio.to_thread.run_sync(submit, port, "correct horse battery", 5)
        shard.stop()
    async with open_sink(SinkConfig(host="127.0.0.1", port=0)) as sink:
        cfg2 = dataclasses.replace(
            cfg, routes=(RouteConfig(domain="*", host="127.0.0.1", port=sink.port, tls="disabled"),)
        )
        async with trio.open_nursery() as nursery:
            shard = await nursery.start(
                lambda task_status: run_shard(cfg2, task_status=task_status, handle_signals=False)
            )
            await sink.wait_for(5, timeout=60)
            shard.stop()
        assert sink.statistics().messages == 5
