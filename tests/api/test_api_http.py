"""The HTTP API against a whole shard on loopback: sending, errors, status, health."""

from __future__ import annotations

import base64
import email
import email.policy
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from api_support import api_config, client, new_key, running_shard, sink_and_shard, wait_until
from jsonschema import Draft202012Validator

from relay.api.openapi import openapi_document
from relay.loadgen import SinkConfig, open_sink

SPEC = openapi_document()


def check_response(path: str, method: str, response: httpx.Response) -> Any:
    """The body of `response`, validated against the OpenAPI document."""
    documented = SPEC["paths"][path][method]["responses"]
    assert str(response.status_code) in documented, (path, response.status_code)
    schema = documented[str(response.status_code)]["content"]["application/json"]["schema"]
    body = response.json()
    Draft202012Validator({**schema, "components": SPEC["components"]}).validate(body)
    return body


def check_request(name: str, doc: Any) -> None:
    schema = {"$ref": f"#/components/schemas/{name}", "components": SPEC["components"]}
    Draft202012Validator(schema).validate(doc)


PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nimage").decode()
EVERY_FIELD = {
    "from": {"email": "news@shop.test", "name": "Shop"},
    "to": ["Ann <ann@example.test>", "bob@example.test"],
    "cc": "carol@example.test",
    "bcc": ["dave@example.test"],
    "reply_to": "help@shop.test",
    "subject": "Spring sale ☀",
    "text": "Hello\n.a line starting with a dot\n",
    "html": '<p>Hello <img src="cid:logo"></p>',
    "attachments": [
        {"content": PNG, "content_type": "image/png", "content_id": "logo", "filename": "l.png"},
        {"content": base64.b64encode(b"%PDF-1.4").decode(), "filename": "terms.pdf"},
    ],
    "headers": {"List-Unsubscribe": "<https://shop.test/u/1>", "X-Mailer-Id": "42"},
    "tags": ["spring", "sale"],
    "metadata": {"customer": "c-17", "vip": True},
    "campaign": "spring-2030",
}


async def test_every_field_is_delivered_and_reported(tmp_path: Path) -> None:
    check_request("SendRequest", EVERY_FIELD)
    async with sink_and_shard(tmp_path, record_content=True) as (sink, shard):
        token = await new_key(shard)
        async with client(shard, token) as c:
            response = await c.post("/v1/messages", json=EVERY_FIELD)
            body = check_response("/v1/messages", "post", response)
            assert response.status_code == 202
            (stored,) = body["messages"]
            assert stored["recipients"] == [
                "ann@example.test",
                "bob@example.test",
                "carol@example.test",
                "dave@example.test",
            ]
            await sink.wait_for(1, timeout=30)
            await wait_until(lambda: shard.spool.get(stored["id"]).is_final)
            response = await c.get(f"/v1/messages/{stored['id']}")
            status = check_response("/v1/messages/{message_id}", "get", response)
    (record,) = sink.records
    assert record.sender == "news@shop.test"
    assert sorted(record.recipients) == sorted(stored["recipients"])  # bcc: envelope only
    msg = email.message_from_bytes(record.content or b"", policy=email.policy.default)
    assert (record.content or b"").startswith(b"Received: from http-api ([127.0.0.1])")
    assert msg["From"] == "Shop <news@shop.test>"
    assert msg["To"] == "Ann <ann@example.test>, bob@example.test"
    assert msg["Cc"] == "carol@example.test"
    assert msg["Bcc"] is None
    assert msg["Reply-To"] == "help@shop.test"
    assert msg["Subject"] == "Spring sale ☀"
    assert msg["List-Unsubscribe"] == "<https://shop.test/u/1>"
    assert msg["Message-ID"] == f"<{stored['id']}@relay.test>"
    assert msg.get_content_type() == "multipart/mixed"
    plain = msg.get_body(("plain",))
    assert plain is not None and ".a line starting with a dot" in plain.get_content()
    assert [a.get_filename() for a in msg.iter_attachments()] == ["terms.pdf"]
    assert status["state"] == "completed"
    assert status["tenant"] == "shop"
    assert status["campaign"] == "spring-2030"
    assert status["tags"] == ["spring", "sale"]
    assert status["metadata"] == {"customer": "c-17", "vip": "true"}
    assert {r["status"] for r in status["recipients"]} == {"delivered"}
    assert all(r["reply"].startswith("250 ") for r in status["recipients"])
    (attempt,) = status["history"]
    assert attempt["mx"] == f"127.0.0.1:{sink.port}"
    assert attempt["reply"].startswith("250 ")


async def test_batch_and_raw_sending(tmp_path: Path) -> None:
    async with sink_and_shard(tmp_path, record_content=True) as (sink, shard):
        token = await new_key(shard, domains=(".shop.test",))  # subdomains
        async with client(shard, token) as c:
            batch = {
                "from": "news@mail.shop.test",
                "subject": "Hi {{ name }}",
                "text": "Your code: {{ code }}",
                "recipients": [
                    {
                        "address": f"u{i}@example.test",
                        "name": f"U{i}",
                        "substitutions": {"code": f"C{i}"},
                    }
                    for i in range(3)
                ],
                "tags": ["batch"],
            }
            check_request("SendRequest", batch)
            response = await c.post("/v1/messages", json=batch)
            body = check_response("/v1/messages", "post", response)
            assert [m["recipients"] for m in body["messages"]] == [
                [f"u{i}@example.test"] for i in range(3)
            ]
            raw_doc = {
                "from": "bounce@mail.shop.test",
                "to": ["raw@example.test"],
                "message": "From: News <news@mail.shop.test>\nTo: raw@example.test\n"
                "Bcc: hidden@example.test\nSubject: raw\n\nraw body\n",
            }
            check_request("RawRequest", raw_doc)
            response = await c.post("/v1/messages/raw", json=raw_doc)
            check_response("/v1/messages/raw", "post", response)
            assert response.status_code == 202
            await sink.wait_for(4, timeout=30)
    by_rcpt = {r.recipients[0]: r for r in sink.records}
    for i in range(3):
        msg = email.message_from_bytes(
            by_rcpt[f"u{i}@example.test"].content or b"", policy=email.policy.default
        )
        assert msg["Subject"] == f"Hi U{i}"
        assert msg["To"] == f"U{i} <u{i}@example.test>"
        assert msg.get_content().strip() == f"Your code: C{i}"
    raw = by_rcpt["raw@example.test"]
    assert raw.sender == "bounce@mail.shop.test"
    assert b"Bcc:" not in (raw.content or b"")  # RFC 5322 3.6.3
    assert (raw.content or b"").endswith(b"\r\nraw body\r\n")


async def test_every_error_names_what_was_wrong(tmp_path: Path) -> None:
    async with open_sink(SinkConfig(host="127.0.0.1", port=0)) as sink:
        cfg = api_config(tmp_path, sink.port, max_body_size=64 * 1024, max_recipients=3)
        async with running_shard(cfg) as shard:
            token = await new_key(shard)
            other = await new_key(shard, tenant="other", domains=("other.test",))
            assert shard.api is not None
            revoked = await new_key(shard)
            await shard.api.keys.revoke(revoked.split("_")[1])
            ok = {"from": "news@shop.test", "to": "a@example.test", "text": "t"}

            async def post(
                doc: Any = None,
                *,
                auth: str | None = token,
                path: str = "/v1/messages",
                **kwargs: Any,
            ) -> dict[str, Any]:
                headers = {"Authorization": f"Bearer {auth}"} if auth else {}
                headers.update(kwargs.pop("headers", {}))
                async with client(shard) as c:
                    if doc is not None:
                        kwargs["json"] = doc
                    response = await c.post(path, headers=headers, **kwargs)
                body = check_response(path, "post", response)
                return {
                    "status": response.status_code,
                    **body["error"],
                    "headers": response.headers,
                }

            missing = await post(ok, auth=None)
            assert missing["status"] == 401
            assert missing["headers"]["www-authenticate"].startswith("Bearer")
            assert (await post(ok, auth="rk_nope"))["status"] == 401
            assert (await post(ok, auth=revoked))["status"] == 401
            forbidden = await post({**ok, "from": "x@evil.test"})
            assert (forbidden["status"], forbidden["field"]) == (403, "from")
            assert "evil.test" in forbidden["message"]
            raw_from = await post(
                {
                    "from": "b@shop.test",
                    "to": "a@example.test",
                    "message": "From: x@evil.test\n\nb",
                },
                path="/v1/messages/raw",
            )
            assert (raw_from["status"], raw_from["field"]) == (403, "message")
            assert "evil.test" in raw_from["message"]
            too_big = await post({**ok, "text": "x" * 70_000})
            assert (too_big["status"], too_big["field"]) == (413, "body")
            bad_type = await post(content=b"{}", headers={"Content-Type": "text/plain"})
            assert (bad_type["status"], bad_type["field"]) == (415, "Content-Type")
            bad_json = await post(
                content=b'{"from": ', headers={"Content-Type": "application/json"}
            )
            assert (bad_json["status"], bad_json["field"]) == (400, "body")
            nan = await post(
                content=b'{"send_at": NaN}', headers={"Content-Type": "application/json"}
            )
            assert nan["status"] == 400
            not_object = await post([1, 2])
            assert (not_object["status"], not_object["field"]) == (422, "body")
            many = await post({**ok, "to": [f"r{i}@example.test" for i in range(4)]})
            assert (many["status"], many["field"]) == (422, "to")
            assert "at most 3" in many["message"]
            injection = await post({**ok, "subject": "x\r\nBcc: victim@example.test"})
            assert (injection["status"], injection["field"]) == (422, "subject")
            placeholder = await post(
                {"from": "a@shop.test", "text": "{{ who }}", "recipients": ["a@example.test"]}
            )
            assert (placeholder["status"], placeholder["field"]) == (
                422,
                "recipients[0].substitutions",
            )
            async with client(shard, token) as c:
                accepted = (await c.post("/v1/messages", json=ok)).json()["messages"][0]["id"]
                unknown = await c.get("/v1/messages/01ARZ3NDEKTSV4RRFFQ69G5FAV")
                assert (
                    check_response("/v1/messages/{message_id}", "get", unknown)["error"]["field"]
                    == "message_id"
                )
                assert unknown.status_code == 404
                wrong_method = await c.get("/v1/messages")
                assert wrong_method.status_code == 405
                assert wrong_method.json()["error"]["type"] == "method_not_allowed"
            async with client(shard, other) as c:
                hidden = await c.get(f"/v1/messages/{accepted}")
                assert hidden.status_code == 404  # another tenant's message does not exist
    assert shard.ingest.statistics.accepted == 1


async def test_rate_limit_is_429_and_a_rejected_event(tmp_path: Path) -> None:
    async with sink_and_shard(tmp_path) as (_sink, shard):
        token = await new_key(shard, rate=2)
        async with client(shard, token) as c:
            doc = {"from": "a@shop.test", "to": "b@example.test", "text": "t", "tags": ["r"]}
            for _ in range(2):
                assert (await c.post("/v1/messages", json=doc)).status_code == 202
            response = await c.post("/v1/messages", json=doc)
            error = check_response("/v1/messages", "post", response)["error"]
        assert response.status_code == 429
        assert response.headers["retry-after"] == "60"
        assert error["smtp_reply"].startswith("450 4.7.1")  # what an SMTP client reads
        assert shard.events is not None
        assert shard.events.counts["rejected"] == 1
        assert shard.events.counts["accepted"] == 2


async def test_send_at_is_kept_and_shown(tmp_path: Path) -> None:
    async with sink_and_shard(tmp_path) as (_sink, shard):
        token = await new_key(shard)
        at = int(time.time()) + 3600
        async with client(shard, token) as c:
            doc = {"from": "a@shop.test", "to": "b@example.test", "text": "t", "send_at": at}
            (stored,) = (await c.post("/v1/messages", json=doc)).json()["messages"]
            status = check_response(
                "/v1/messages/{message_id}", "get", await c.get(f"/v1/messages/{stored['id']}")
            )
    assert status["state"] == "queued"
    assert status["send_at"] == status["next_attempt"]
    assert status["send_at"].endswith("Z")
    assert [r["status"] for r in status["recipients"]] == ["pending"]
    assert status["history"] == []


async def test_health_readiness_metrics_and_openapi(tmp_path: Path) -> None:
    async with sink_and_shard(tmp_path) as (sink, shard):
        token = await new_key(shard)
        async with client(shard, token) as c:
            assert check_response("/healthz", "get", await c.get("/healthz")) == {"status": "ok"}
            ready = await c.get("/readyz")
            assert check_response("/readyz", "get", ready)["status"] == "ready"
            doc = {"from": "a@shop.test", "to": "b@example.test", "text": "t"}
            assert (await c.post("/v1/messages", json=doc)).status_code == 202
            await sink.wait_for(1, timeout=30)
            await wait_until(lambda: shard.delivery.statistics().delivered == 1)
            metrics = (await c.get("/metrics")).text
            assert (await c.get("/openapi.json")).json() == SPEC
            assert shard.api is not None
            shard.api.draining = True  # what stop() sets first, before Hypercorn stops
            draining = await c.get("/readyz")
            assert draining.status_code == 503
            assert check_response("/readyz", "get", draining)["status"] == "draining"
            refused = await c.post("/v1/messages", json=doc)
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "1"
    assert 'relay_messages_accepted_total{shard="0"} 1.0' in metrics
    assert 'relay_recipients_delivered_total{shard="0"} 1.0' in metrics
    assert 'relay_events_total{event="accepted",shard="0"} 1.0' in metrics
    assert 'relay_queue_depth{shard="0"}' in metrics
    assert 'relay_sessions_open{kind="delivery",shard="0"}' in metrics


@pytest.mark.parametrize("with_api", [False])
async def test_api_can_be_disabled(tmp_path: Path, with_api: bool) -> None:
    async with sink_and_shard(tmp_path, enabled=with_api) as (_sink, shard):
        assert shard.api is None
        assert shard.events is not None


async def test_a_stopping_shard_finishes_requests_and_stops(tmp_path: Path) -> None:
    async with open_sink(SinkConfig(host="127.0.0.1", port=0)) as sink:
        cfg = api_config(tmp_path, sink.port)
        with trio.fail_after(30):
            async with running_shard(cfg) as shard:
                token = await new_key(shard)
                async with client(shard, token) as c:
                    doc = {"from": "a@shop.test", "to": "b@example.test", "text": "t"}
                    assert (await c.post("/v1/messages", json=doc)).status_code == 202
        assert shard.api is not None and shard.api.stopped.is_set()
        assert not (cfg.data_path / "metrics" / "shard-0.json").exists()
