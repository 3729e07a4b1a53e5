"""The admin API (/admin/v1/...) against a whole shard on loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import client, new_key, sink_and_shard, wait_until

from relay.api.admin import AdminFilter, parse_filter
from relay.api.problems import ApiError
from relay.app import Shard
from relay.config import load_config
from relay.errors import ConfigError

ADMIN = "admin-token-0123456789abcdef"
OTHER_ADMIN = "second-admin-token-fedcba9876543210"


def message(to: str, **extra: Any) -> dict[str, Any]:
    return {"from": "news@shop.test", "to": to, "subject": "hi", "text": "hello", **extra}


async def send(shard: Shard, to: str) -> str:
    token = await new_key(shard)
    async with client(shard, token) as c:
        response = await c.post("/v1/messages", json=message(to))
    assert response.status_code == 202, response.text
    return str(response.json()["messages"][0]["id"])


def error_field(response: httpx.Response) -> str:
    return str(response.json()["error"].get("field"))


async def test_admin_api_is_absent_without_tokens(tmp_path: Path) -> None:
    async with sink_and_shard(tmp_path) as (_sink, shard), client(shard, ADMIN) as c:
        for method, path in (
            ("GET", "/admin/v1/queue/summary"),
            ("GET", "/admin/v1/status.json"),
            ("POST", "/admin/v1/retry"),
            ("GET", "/status"),
        ):
            response = await c.request(method, path)
            assert response.status_code == 404, path
            assert response.json()["error"]["type"] == "not_found"


async def test_authentication(tmp_path: Path) -> None:
    async with sink_and_shard(tmp_path, admin_tokens=(ADMIN, OTHER_ADMIN)) as (_sink, shard):
        api_key = await new_key(shard)
        for token in (None, "wrong-token-0123456789", api_key):
            async with client(shard, token) as c:
                response = await c.get("/admin/v1/queue/summary")
                assert response.status_code == 401, token
                assert response.headers["www-authenticate"].startswith("Bearer")
                response = await c.post("/admin/v1/bounce", json={"all": True})
                assert response.status_code == 401, token
        async with client(shard, ADMIN) as c:
            # An admin token is not an API key either.
            response = await c.post("/v1/messages", json=message("a@example.test"))
            assert response.status_code == 401
        for token in (ADMIN, OTHER_ADMIN):  # either one of the configured tokens
            async with client(shard, token) as c:
                assert (await c.get("/admin/v1/queue/summary")).status_code == 200


async def test_suspension_holds_mail_until_resumed(tmp_path: Path) -> None:
    async with (
        sink_and_shard(tmp_path, admin_tokens=(ADMIN,)) as (sink, shard),
        client(shard, ADMIN) as admin,
    ):
        response = await admin.post(
            "/admin/v1/suspensions",
            json={"kind": "domain", "name": "Held.TEST", "reason": "complaints"},
        )
        assert response.status_code == 201, response.text
        suspension = response.json()["suspension"]
        assert suspension["kind"] == "domain"
        assert suspension["name"] == "held.test"
        assert suspension["until"] is None
        assert suspension["reason"] == "complaints"

        held = await send(shard, "ann@held.test")
        await send(shard, "bob@free.test")
        await sink.wait_for(1, timeout=30)  # the other domain goes
        assert [r.recipients for r in sink.records] == [("bob@free.test",)]
        await wait_until(lambda: shard.spool.count_queued() == 1)  # its outcome is stored

        response = await admin.get("/admin/v1/queue/summary")
        assert response.status_code == 200
        summary = response.json()
        assert summary["messages"] == 1
        assert summary["by_state"]["suspended"] == 1
        assert summary["by_domain"]["held.test"]["suspended"] == 1
        assert summary["by_domain"]["held.test"]["recipients"] == 1
        assert summary["by_tenant"]["shop"]["messages"] == 1
        assert [(s["kind"], s["name"]) for s in summary["suspensions"]] == [("domain", "held.test")]
        response = await admin.get(f"/admin/v1/messages/{held}")
        assert response.status_code == 200
        assert response.json()["state"] == "queued"
        assert response.json()["recipients"][0]["address"] == "ann@held.test"

        response = await admin.delete("/admin/v1/suspensions/domain/held.test")
        assert response.status_code == 200
        assert response.json()["resumed"] == {"kind": "domain", "name": "held.test"}
        await sink.wait_for(2, timeout=30)
        assert sorted(r.recipients[0] for r in sink.records) == ["ann@held.test", "bob@free.test"]
        await wait_until(lambda: shard.spool.count_queued() == 0)

        response = await admin.delete("/admin/v1/suspensions/domain/held.test")
        assert response.status_code == 404
        assert error_field(response) == "name"


async def test_retry_and_bounce_by_filter(tmp_path: Path) -> None:
    async with (
        sink_and_shard(tmp_path, admin_tokens=(ADMIN,)) as (_sink, shard),
        client(shard, ADMIN) as admin,
    ):
        response = await admin.post(
            "/admin/v1/suspensions", json={"kind": "tenant", "name": "shop", "duration": 3600}
        )
        assert response.status_code == 201
        assert response.json()["suspension"]["until"] is not None
        first = await send(shard, "a@one.test")
        second = await send(shard, "b@two.test")

        response = await admin.post("/admin/v1/retry", json={"filter": {"ids": [first]}})
        assert response.status_code == 200, response.text
        assert response.json()["retried"] == 1
        assert response.json()["ids"] == [first]

        response = await admin.post(
            "/admin/v1/bounce", json={"filter": {"domain": "two.test"}, "reason": "list cleanup"}
        )
        assert response.status_code == 200, response.text
        assert response.json()["bounced_recipients"] == 1
        bounced = shard.spool.get(second)
        assert bounced is not None and bounced.is_final
        assert "list cleanup" in bounced.recipients[0].reply
        kept = shard.spool.get(first)
        assert kept is not None and not kept.is_final

        response = await admin.post("/admin/v1/retry", json={"all": True})
        assert response.status_code == 200
        assert first in response.json()["ids"]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/admin/v1/bounce", {}, "filter"),
        ("/admin/v1/bounce", {"filter": {}}, "filter"),
        ("/admin/v1/bounce", {"filter": {}, "all": False}, "filter"),
        ("/admin/v1/retry", {"filter": None}, "filter"),
        ("/admin/v1/bounce", {"filter": {}, "all": "yes"}, "all"),
        ("/admin/v1/bounce", {"filter": {"domian": "x.test"}}, "filter.domian"),
        ("/admin/v1/bounce", {"filter": {"domain": 7}}, "filter.domain"),
        ("/admin/v1/retry", {"filter": {"ids": "X"}}, "filter.ids"),
        ("/admin/v1/retry", {"filter": {"ids": [1]}}, "filter.ids[0]"),
        ("/admin/v1/retry", {"filter": {"older_than": -1}}, "filter.older_than"),
        ("/admin/v1/retry", {"filter": {"domain": "a.test"}, "reason": "x"}, "reason"),
        ("/admin/v1/bounce", {"filter": {"domain": "a.test"}, "reason": "a\r\nb"}, "reason"),
        ("/admin/v1/suspensions", {"kind": "site", "name": "x"}, "kind"),
        ("/admin/v1/suspensions", {"kind": "domain"}, "name"),
        ("/admin/v1/suspensions", {"kind": "domain", "name": "x", "duration": 0}, "duration"),
        ("/admin/v1/suspensions", {"kind": "tenant", "name": "x", "until": 1}, "until"),
        ("/admin/v1/suspensions", [], "body"),
    ],
)
async def test_bad_bodies_name_the_field(tmp_path: Path, path: str, body: Any, field: str) -> None:
    async with (
        sink_and_shard(tmp_path, admin_tokens=(ADMIN,)) as (_sink, shard),
        client(shard, ADMIN) as admin,
    ):
        await send(shard, "a@example.test")
        response = await admin.post(path, json=body)
        assert response.status_code == 422, response.text
        assert error_field(response) == field
        assert response.json()["error"]["type"] == "validation_error"


async def test_unknown_message_and_kind(tmp_path: Path) -> None:
    async with (
        sink_and_shard(tmp_path, admin_tokens=(ADMIN,)) as (_sink, shard),
        client(shard, ADMIN) as admin,
    ):
        response = await admin.get("/admin/v1/messages/01ARZ3NDEKTSV4RRFFQ69G5FAV")
        assert response.status_code == 404
        assert error_field(response) == "message_id"
        response = await admin.delete("/admin/v1/suspensions/site/x.test")
        assert response.status_code == 422
        assert error_field(response) == "kind"


def test_parse_filter() -> None:
    assert parse_filter(None) == AdminFilter()
    assert parse_filter({}).is_empty()
    chosen = parse_filter({"ids": ["A"], "sender": "@shop.test", "older_than": 0})
    assert chosen == AdminFilter(ids=("A",), sender="@shop.test", older_than=0.0)
    assert not chosen.is_empty()
    with pytest.raises(ApiError) as caught:
        parse_filter({"older_than": True})
    assert caught.value.field == "filter.older_than"


def test_admin_tokens_are_checked_at_start(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text('[api]\nadmin_tokens = ["short"]\n')
    with pytest.raises(ConfigError, match=r"api\.admin_tokens\[0\]"):
        load_config(path)
    path.write_text(f'[api]\nadmin_tokens = ["{ADMIN}"]\n')
    assert load_config(path).api.admin_tokens == (ADMIN,)


def test_every_admin_route_is_in_the_openapi_document() -> None:
    from relay.api.openapi import openapi_document

    paths = openapi_document()["paths"]
    expected = {
        ("/admin/v1/queue/summary", "get"),
        ("/admin/v1/messages/{message_id}", "get"),
        ("/admin/v1/suspensions", "post"),
        ("/admin/v1/suspensions/{kind}/{name}", "delete"),
        ("/admin/v1/retry", "post"),
        ("/admin/v1/bounce", "post"),
        ("/admin/v1/status.json", "get"),
    }
    for path, method in expected:
        operation = paths[path][method]
        assert operation["security"] == [{"adminBearer": []}]
        assert "401" in operation["responses"]
