"""What spans shards (status look-up, metrics) and API keys with their CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from relay.api.keys import ApiKeyError, ApiKeyStore, token_digest
from relay.api.metrics import Gauges, MetricsBoard
from relay.api.status import MessageFinder, describe
from relay.cli import main
from relay.model import NewMessage
from relay.spool import open_spool


async def test_a_message_is_found_in_another_shards_spool(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    async with open_spool(root / "shard-1", map_size=1 << 26, sync=False) as other:
        stored = await other.store(
            NewMessage("s@shop.test", ("a@x.test",), b"Subject: x\r\n\r\nb\r\n", tenant="t")
        )
    # shard 1 belongs to another process now; shard 0 is ours
    async with open_spool(root / "shard-0", map_size=1 << 26, sync=False) as own:
        mine = await own.store(NewMessage("s@shop.test", ("b@x.test",), b"\r\nb\r\n"))
        finder = MessageFinder(own, own.path, root)
        try:
            found = finder.find(stored.id)
            assert found is not None
            shard, meta = found
            assert (shard, meta.id, meta.tenant) == (1, stored.id, "t")
            assert describe(meta, shard)["recipients"][0]["status"] == "pending"
            assert finder.find(mine.id) is not None and finder.find(mine.id)[0] == 0  # type: ignore[index]
            assert finder.find("01ARZ3NDEKTSV4RRFFQ69G5FAV") is None
            assert finder.find("../../etc/passwd") is None
        finally:
            finder.close()


def test_metrics_cover_every_live_shard(tmp_path: Path) -> None:
    now = [1000.0]
    boards = [
        MetricsBoard(
            i,
            tmp_path,
            lambda i=i: Gauges(accepted=10 + i, site_sessions={"default/mx.x.test": i}),  # type: ignore[misc]
            clock=lambda: now[0],
        )
        for i in range(3)
    ]
    for board in boards[1:]:
        board.write_snapshot(board.snapshot())
    text = boards[0].exposition().decode()
    for i in range(3):
        assert f'relay_messages_accepted_total{{shard="{i}"}} {10 + i}.0' in text
    assert 'relay_site_sessions{shard="2",site="default/mx.x.test"} 2.0' in text
    now[0] += 61  # shard 2's snapshot is stale, shard 1 writes again
    boards[1].write_snapshot(boards[1].snapshot())
    text = boards[0].exposition().decode()
    assert 'shard="1"' in text and 'shard="2"' not in text
    boards[1].remove_snapshot()
    assert not (tmp_path / "shard-1.json").exists()


async def test_key_store(tmp_path: Path) -> None:
    async with open_spool(tmp_path / "accounts", map_size=1 << 26, sync=False) as spool:
        store = ApiKeyStore(spool.aux("apikeys"), clock=lambda: 123.0)
        key, token = await store.create("shop", ["Shop.TEST", ".mail.shop.test"], rate_per_minute=5)
        assert token.startswith(f"rk_{key.id}_") and len(token) == 3 + 12 + 1 + 43
        assert key.domains == ("shop.test", ".mail.shop.test")
        raw = spool.aux("apikeys").get(key.id.encode())
        assert token.encode() not in json.dumps(raw, default=repr).encode()  # only the hash
        assert token_digest(token) in raw
        assert store.authenticate(token) == key
        assert store.authenticate(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
        assert store.authenticate("Bearer " + token) is None
        assert key.may_send_from("shop.test") and key.may_send_from("x.mail.shop.test")
        assert not key.may_send_from("evilshop.test") and not key.may_send_from("mail.shop.test")
        assert key.account == f"apikey:{key.id}"
        assert [k.id for k in store.list()] == [key.id]
        for tenant, domains in (("bad tenant", ["a.test"]), ("t", []), ("t", ["a..b"])):
            with pytest.raises(ApiKeyError):
                await store.create(tenant, domains)
        await store.revoke(key.id)
        assert store.authenticate(token) is None
        with pytest.raises(ApiKeyError):
            await store.revoke(key.id)


def test_key_commands(tmp_path: Path) -> None:
    runner = CliRunner()
    data = ["--data-dir", str(tmp_path / "data")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    created = runner.invoke(
        main,
        ["key", "create", "--tenant", "shop", "--domains", "a.test, b.test", "--rate", "60", *data],
        env=env,
    )
    assert created.exit_code == 0, created.output
    token = created.stdout.strip()
    assert token.startswith("rk_")
    assert "shown once" in created.stderr
    listed = runner.invoke(main, ["key", "list", "--json", *data], env=env)
    (row,) = json.loads(listed.stdout)
    assert row["tenant"] == "shop" and row["domains"] == ["a.test", "b.test"]
    assert row["rate_per_minute"] == 60
    assert token not in listed.stdout
    table = runner.invoke(main, ["key", "list", *data], env=env)
    assert row["id"] in table.stdout and "60/min" in table.stdout
    bad = runner.invoke(main, ["key", "create", "--tenant", "x y", "--domains", "a.test", *data])
    assert bad.exit_code != 0 and "invalid tenant" in bad.output
    revoked = runner.invoke(main, ["key", "revoke", row["id"], *data], env=env)
    assert revoked.exit_code == 0, revoked.output
    again = runner.invoke(main, ["key", "revoke", row["id"], *data], env=env)
    assert again.exit_code != 0 and "no API key" in again.output
    assert "no API keys" in runner.invoke(main, ["key", "list", *data], env=env).stdout
