"""Idempotency-Key: replays, conflicts, concurrency, restarts, other processes, expiry."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import trio
from api_support import api_config, client, new_key, running_shard, sink_and_shard

from relay.api.idempotency import STRIPES, IdempotencyStore, fingerprint
from relay.api.problems import ApiError
from relay.loadgen import SinkConfig, open_sink
from relay.spool import open_spool

DOC = {"from": "news@shop.test", "to": ["a@example.test", "b@example.test"], "text": "hello"}


async def test_same_key_same_request_replays_and_sends_nothing_new(tmp_path: Path) -> None:
    async with sink_and_shard(tmp_path) as (sink, shard):
        token = await new_key(shard)
        other_token = await new_key(shard)
        async with client(shard, token) as c:
            key = {"Idempotency-Key": "order-1001"}
            first = await c.post("/v1/messages", json=DOC, headers=key)
            assert first.status_code == 202
            assert "idempotent-replayed" not in first.headers
            again = await c.post("/v1/messages", json=DOC, headers=key)
            # the same JSON written differently is the same request
            reordered = await c.post(
                "/v1/messages",
                content=b'{"text":"hello", "to":["a@example.test","b@example.test"],'
                b' "from":"news@shop.test"}',
                headers={**key, "Content-Type": "application/json"},
            )
            for replay in (again, reordered):
                assert replay.status_code == 202
                assert replay.content == first.content
                assert replay.headers["idempotent-replayed"] == "true"
            conflict = await c.post("/v1/messages", json={**DOC, "text": "other"}, headers=key)
            assert conflict.status_code == 422
            assert conflict.json()["error"] == {
                "type": "idempotency_conflict",
                "message": "Idempotency-Key: already used for a different request",
                "field": "Idempotency-Key",
            }
            raw = await c.post(
                "/v1/messages/raw",
                json={
                    "from": "a@shop.test",
                    "to": "b@example.test",
                    "message": "From: a@shop.test\n\nb",
                },
                headers=key,
            )
            assert raw.status_code == 422  # same key, other endpoint: another request
            bad = await c.post("/v1/messages", json=DOC, headers={"Idempotency-Key": "x" * 256})
            assert (bad.status_code, bad.json()["error"]["field"]) == (422, "Idempotency-Key")
        async with client(shard, other_token) as c:
            # keys are per API key: another key's "order-1001" is another request
            separate = await c.post("/v1/messages", json=DOC, headers=key)
            assert separate.status_code == 202
            assert separate.content != first.content
        await sink.wait_for(2, timeout=30)
    assert shard.ingest.statistics.accepted == 2
    assert sink.statistics().recipients == 4


async def test_errors_are_not_remembered(tmp_path: Path) -> None:
    async with sink_and_shard(tmp_path) as (_sink, shard):
        token = await new_key(shard)
        async with client(shard, token) as c:
            key = {"Idempotency-Key": "k"}
            wrong = await c.post("/v1/messages", json={**DOC, "from": "x@evil.test"}, headers=key)
            assert wrong.status_code == 403
            fixed = await c.post("/v1/messages", json=DOC, headers=key)
            assert fixed.status_code == 202
            assert "idempotent-replayed" not in fixed.headers


async def test_concurrent_duplicates_send_once(tmp_path: Path) -> None:
    async with sink_and_shard(tmp_path) as (sink, shard):
        token = await new_key(shard)
        answers: list[Any] = []
        async with client(shard, token) as c:

            async def post() -> None:
                response = await c.post(
                    "/v1/messages", json=DOC, headers={"Idempotency-Key": "dup"}
                )
                answers.append((response.status_code, response.json()))

            async with trio.open_nursery() as nursery:
                for _ in range(20):
                    nursery.start_soon(post)
        await sink.wait_for(1, timeout=30)
    assert len(answers) == 20
    assert all(a == answers[0] for a in answers)
    assert answers[0][0] == 202
    assert shard.ingest.statistics.accepted == 1


async def test_keys_survive_a_restart(tmp_path: Path) -> None:
    async with open_sink(SinkConfig(host="127.0.0.1", port=0)) as sink:
        cfg = api_config(tmp_path, sink.port)
        async with running_shard(cfg) as shard:
            token = await new_key(shard)
            async with client(shard, token) as c:
                first = await c.post("/v1/messages", json=DOC, headers={"Idempotency-Key": "r"})
        async with running_shard(cfg) as shard, client(shard, token) as c:
            again = await c.post("/v1/messages", json=DOC, headers={"Idempotency-Key": "r"})
        assert again.status_code == 202
        assert again.content == first.content
        assert again.headers["idempotent-replayed"] == "true"
        assert shard.ingest.statistics.accepted == 0


_HOLDER = textwrap.dedent(
    """
    import fcntl, os, sys
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.lockf(fd, fcntl.LOCK_EX, 1, int(sys.argv[2]))
    print("locked", flush=True)
    sys.stdin.read()
    """
)


async def test_another_process_holding_the_key_makes_us_wait(tmp_path: Path) -> None:
    """Two shard processes: the POSIX record lock serialises them (503 past the timeout)."""
    lock_path = tmp_path / "idempotency.lock"
    async with open_spool(tmp_path / "accounts", map_size=1 << 26, sync=False) as spool:
        store = IdempotencyStore(spool.aux("idempotency"), lock_path, ttl=86400)
        record_key = store.record_key("scope", "key")
        stripe = int.from_bytes(record_key[-8:], "big") % STRIPES
        holder = subprocess.Popen(
            [sys.executable, "-c", _HOLDER, str(lock_path), str(stripe)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        try:
            assert holder.stdout is not None
            assert (await trio.to_thread.run_sync(holder.stdout.readline)).strip() == b"locked"
            fp = fingerprint("POST", "/v1/messages", {})
            with pytest.raises(ApiError) as info:
                async with store.reserve("scope", "key", fp, timeout=0.3):
                    pass
            assert info.value.status == 503
            assert info.value.headers == {"Retry-After": "1"}
            async with store.reserve("scope", "other key", fp, timeout=5) as slot:
                assert slot.previous is None  # another stripe: not held up
        finally:
            assert holder.stdin is not None
            holder.stdin.close()
            holder.wait(timeout=30)
        async with store.reserve("scope", "key", fp, timeout=5) as slot:
            assert slot.previous is None
            await slot.save(202, b"{}")
        store.close()


async def test_records_expire_and_are_purged(tmp_path: Path) -> None:
    now = [1_000_000.0]
    async with open_spool(tmp_path / "accounts", map_size=1 << 26, sync=False) as spool:
        store = IdempotencyStore(
            spool.aux("idempotency"), tmp_path / "l", ttl=100.0, clock=lambda: now[0]
        )
        fp = fingerprint("POST", "/p", {"a": 1})
        for name in ("old", "new"):
            async with store.reserve("s", name, fp, timeout=5) as slot:
                await slot.save(202, name.encode())
            now[0] += 30
        assert store.lookup(store.record_key("s", "old")) is not None
        now[0] += 50  # "old" is 110 s old, "new" 80 s
        assert store.lookup(store.record_key("s", "old")) is None
        async with store.reserve(
            "s", "old", fingerprint("POST", "/p", {"b": 2}), timeout=5
        ) as slot:
            assert slot.previous is None  # expired: the key may be used again
        assert await store.purge() == 1
        assert [k for k, _ in spool.aux("idempotency").items()] == [store.record_key("s", "new")]
        store.close()
