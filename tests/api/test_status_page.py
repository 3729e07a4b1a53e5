"""The live /status page: its data (GET /admin/v1/status.json) and the page in Chromium."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from api_support import api_config, base_url, client, new_key, running_shard, wait_until

from relay.api.dashboard import Activity, DomainOutcomes, StatusBoard
from relay.app import Shard
from relay.loadgen import Sink, SinkConfig, open_sink
from relay.loadgen.sinkconfig import Faults
from relay.model import RcptStatus

ADMIN = "status-admin-token-0123456789"
BUSY_REPLY = (452, "4.2.2", "Mailbox busy, try later")


@asynccontextmanager
async def busy_shard(tmp_path: Path) -> AsyncIterator[tuple[Sink, Shard]]:
    """A shard whose sink defers slow@busy.test, holding mail of held.test back.

    After it starts: one message delivered to free.test, one deferred (busy.test),
    one held by a suspension (held.test): the queue holds two.
    """
    faults = Faults(recipients={"slow@busy.test": BUSY_REPLY})
    async with (
        open_sink(SinkConfig(host="127.0.0.1", port=0, faults=faults)) as sink,
        running_shard(api_config(tmp_path, sink.port, admin_tokens=(ADMIN,))) as shard,
    ):
        async with client(shard, ADMIN) as admin:
            response = await admin.post(
                "/admin/v1/suspensions", json={"kind": "domain", "name": "held.test"}
            )
            assert response.status_code == 201
        token = await new_key(shard)
        async with client(shard, token) as c:
            for to in ("ann@free.test", "slow@busy.test", "bob@held.test"):
                doc = {"from": "news@shop.test", "to": to, "subject": "s", "text": "t"}
                assert (await c.post("/v1/messages", json=doc)).status_code == 202
        await sink.wait_for(1, timeout=30)
        await wait_until(lambda: shard.spool.count_queued() == 2)
        await wait_until(lambda: shard.delivery.statistics().deferred >= 1)
        yield sink, shard


async def test_status_document(tmp_path: Path) -> None:
    async with busy_shard(tmp_path) as (_sink, shard), client(shard, ADMIN) as admin:
        response = await admin.get("/admin/v1/status.json")
        assert response.status_code == 200
        doc = response.json()
        assert doc["shard"] == 0
        assert doc["queued"] == 2
        assert doc["totals"]["delivered"] >= 1
        assert doc["totals"]["deferred"] >= 1
        assert doc["history"] and doc["history"][-1][1] == 2
        assert set(doc["rates"]) == {"delivered", "deferred", "bounced"}
        domains = {d["domain"]: d for d in doc["domains"]}
        assert domains["free.test"]["delivered"] == 1
        assert domains["free.test"]["last_error"] == ""
        (error,) = doc["errors"]
        assert error["domain"] == "busy.test"
        assert error["last_error"].startswith("452 4.2.2")
        assert error["last_error_mx"]
        assert error["last_error_at"] is not None
        assert all({"name", "sessions", "queued", "window", "dead"} <= set(s) for s in doc["sites"])
        async with client(shard, "not-the-admin-token-000") as other:
            assert (await other.get("/admin/v1/status.json")).status_code == 401


async def test_status_page_is_a_shell_without_data(tmp_path: Path) -> None:
    async with busy_shard(tmp_path) as (_sink, shard), client(shard) as anonymous:
        response = await anonymous.get("/status")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        policy = response.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "connect-src 'self'" in policy
        assert response.headers["cache-control"] == "no-store"
        page = response.text
        assert "/admin/v1/status.json" in page
        assert "busy.test" not in page and ADMIN not in page
        assert not re.search(r"""(?:src|href)=["']?(?:https?:)?//""", page)  # nothing external


@dataclass
class FakeOutcome:
    message_id: str
    recipient: str
    status: RcptStatus
    reply: str
    mx: str = "mx.example.test"
    attempt: int = 1


def test_domain_outcomes_keep_counts_and_the_last_error() -> None:
    outcomes = DomainOutcomes(max_domains=2, clock=lambda: 1000.0)
    outcomes.note(FakeOutcome("A", "a@one.test", RcptStatus.DELIVERED, "250 ok"))
    outcomes.note(FakeOutcome("B", "b@One.TEST", RcptStatus.DEFERRED, "451 4.3.0 later"))
    outcomes.note(FakeOutcome("C", "c@two.test", RcptStatus.BOUNCED, "550 5.1.1 unknown"))
    outcomes.note(FakeOutcome("D", "d@one.test", RcptStatus.DELIVERED, "250 ok"))
    first, second = outcomes.snapshot()
    assert (first.domain, first.delivered, first.deferred, first.last_error) == (
        "one.test",
        2,
        1,
        "451 4.3.0 later",
    )
    assert (second.domain, second.bounced, second.last_error_at) == ("two.test", 1, 1000.0)
    outcomes.note(FakeOutcome("E", "e@three.test", RcptStatus.DELIVERED, "250 ok"))
    assert [d.domain for d in outcomes.snapshot()] == ["three.test", "one.test"]  # bounded


def test_status_board_rates_from_samples() -> None:
    now = [0.0]
    delivered = [0]

    def activity() -> Activity:
        return Activity(queued=10 - delivered[0], delivered=delivered[0], deferred=0, bounced=0,
                        sessions=1)  # fmt: skip

    board = StatusBoard(activity, shard=3, interval=2.0, samples=5, clock=lambda: now[0])
    assert board.document()["rates"]["delivered"] == 0.0  # one sample: no rate yet
    for _ in range(7):
        now[0] += 2.0
        delivered[0] += 4
        board.sample()
    doc = board.document()  # a sample at the same time as the last: still a clean rate
    assert doc["rates"]["delivered"] == 2.0
    assert len(doc["history"]) == 5
    assert doc["shard"] == 3


CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
)


async def dump_dom(url: str, profile: Path) -> str:
    """The DOM of `url` after a few seconds of virtual time, from headless Chromium."""
    assert CHROMIUM is not None
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--no-default-browser-check",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",
        "--dump-dom",
        url,
    ]
    with trio.fail_after(120):  # a safety net; it takes a second or two
        result = await trio.run_process(command, capture_stdout=True, capture_stderr=True)
    return result.stdout.decode("utf-8", "replace")


def figure(dom: str, element_id: str) -> str:
    m = re.search(rf'id="{element_id}">([^<]*)<', dom)
    assert m is not None, f"no #{element_id} in the page"
    return m.group(1)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
async def test_status_page_in_headless_chromium(tmp_path: Path) -> None:
    async with busy_shard(tmp_path) as (_sink, shard):
        url = f"{base_url(shard)}/status#token={ADMIN}"
        dom = await dump_dom(url, tmp_path / "chromium-profile")
        async with client(shard, ADMIN) as admin:
            doc: dict[str, Any] = (await admin.get("/admin/v1/status.json")).json()
    assert figure(dom, "problem") == "", dom
    assert figure(dom, "queued") == "2"
    assert figure(dom, "shard") == "0"
    assert int(figure(dom, "delivered")) >= 1
    assert int(figure(dom, "deferred")) >= 1
    assert re.fullmatch(r"\d+\.\d", figure(dom, "rate"))
    assert figure(dom, "updated") != "never"
    assert re.search(r'<polyline id="line"[^>]*points="[0-9.]+,[0-9.]+', dom)
    assert "<td>free.test</td>" in dom
    assert "452 4.2.2 Mailbox busy" in dom  # the last error of busy.test
    assert doc["queued"] == 2
    assert ADMIN not in json.dumps(doc)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
async def test_status_page_without_token_says_so(tmp_path: Path) -> None:
    async with busy_shard(tmp_path) as (_sink, shard):
        dom = await dump_dom(f"{base_url(shard)}/status", tmp_path / "chromium-profile")
    assert "No admin token" in figure(dom, "problem")
    assert figure(dom, "queued") == "-"
