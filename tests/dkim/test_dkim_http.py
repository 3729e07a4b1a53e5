"""End to end: mail sent through the HTTP API reaches the MX signed (the same ingest
signer as SMTP), and dkimpy accepts the signatures."""

from __future__ import annotations

from pathlib import Path

import httpx
import trio
from dkim_support import signature_tags, signed_names, verify_each

from relay.app import Shard, run_shard
from relay.config import (
    ApiConfig,
    Config,
    DeliveryConfig,
    DkimConfig,
    RouteConfig,
    ServerConfig,
    SubmissionConfig,
)
from relay.dkim import SigningKey, key_path, private_key_pem
from relay.loadgen import SinkConfig, open_sink


async def test_http_submitted_mail_arrives_signed(
    tmp_path: Path, rsa_key: SigningKey, ed_key: SigningKey
) -> None:
    for key in (rsa_key, ed_key):
        path = key_path(tmp_path / "dkim", key.domain, key.selector, key.algorithm)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(private_key_pem(key.private_key))
    async with open_sink(SinkConfig(host="127.0.0.1", port=0, record_content=True)) as sink:
        cfg = Config(
            server=ServerConfig(
                hostname="relay.test", data_dir=str(tmp_path / "data"), shutdown_grace=3.0
            ),
            submission=SubmissionConfig(listen=("127.0.0.1:0",), listen_tls=()),
            api=ApiConfig(listen=("127.0.0.1:0",)),
            delivery=DeliveryConfig(nameservers=("127.0.0.1",), retry_min=1.0, retry_max=2.0),
            routes=(RouteConfig(domain="*", host="127.0.0.1", port=sink.port, tls="disabled"),),
            dkim=DkimConfig(key_dir=str(tmp_path / "dkim")),
        )
        async with trio.open_nursery() as nursery:
            shard: Shard = await nursery.start(
                lambda task_status: run_shard(cfg, task_status=task_status, handle_signals=False)
            )
            assert shard.api is not None
            _, token = await shard.api.keys.create("shop", ("shop.test",))
            host, port = shard.api.addresses[0]
            async with httpx.AsyncClient(
                base_url=f"http://{host}:{port}",
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            ) as client:
                response = await client.post(
                    "/v1/messages",
                    json={
                        "from": {"email": "news@shop.test", "name": "Shop"},
                        "to": ["ann@example.test"],
                        "subject": "Spring sale",
                        "text": "Hello\n.a line starting with a dot\n",
                        "headers": {"List-Unsubscribe": "<https://shop.test/u/1>"},
                    },
                )
                assert response.status_code == 202, response.text
            await sink.wait_for(1, timeout=60)
            shard.stop()
    (record,) = sink.records
    content = record.content or b""
    assert verify_each(content, rsa_key, ed_key) == [True, True]
    names = signed_names(signature_tags(content)[0])
    assert {b"from", b"to", b"subject", b"list-unsubscribe", b"message-id"} <= set(names)
    assert b"received" not in names
