"""Aux tables: small durable key/value tables in the spool's environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.spool import DEFAULT_AUX_TABLES, open_spool


async def test_put_get_items_delete(spool_dir: Path) -> None:
    async with open_spool(spool_dir) as spool:
        users = spool.aux("users")
        assert users.name == "users"
        assert users.get(b"alice") is None
        await users.put(b"alice", {"password_hash": "x", "quota": [1, 2]})
        await users.put(b"bob", "plain string")
        await users.put(b"bobby", 3)
        await users.put(b"carol", None)
        assert users.get(b"alice") == {"password_hash": "x", "quota": (1, 2)}
        assert list(users.items(b"bob")) == [(b"bob", "plain string"), (b"bobby", 3)]
        assert [key for key, _ in users.items()] == [b"alice", b"bob", b"bobby", b"carol"]
        assert list(users.items(b"zed")) == []
        await users.put(b"bob", "replaced")
        assert users.get(b"bob") == "replaced"
        assert await users.delete(b"bob") is True
        assert await users.delete(b"bob") is False
        assert users.get(b"bob") is None
        # Tables are separate.
        assert spool.aux("apikeys").get(b"alice") is None


async def test_values_are_durable_across_reopening(spool_dir: Path) -> None:
    async with open_spool(spool_dir) as spool:
        await spool.aux("suspensions").put(b"domain:example.net", {"until": 1.5})
    async with open_spool(spool_dir) as spool:
        assert spool.aux("suspensions").get(b"domain:example.net") == {"until": 1.5}


async def test_declared_tables_only(spool_dir: Path) -> None:
    async with open_spool(spool_dir, aux_tables=("users", "extra")) as spool:
        await spool.aux("extra").put(b"k", 1)
        with pytest.raises(KeyError, match="webhooks"):
            spool.aux("webhooks")
    async with open_spool(spool_dir) as spool:
        for name in DEFAULT_AUX_TABLES:
            assert spool.aux(name).get(b"k") is None


async def test_bad_keys_and_values_are_refused_before_the_writer(spool_dir: Path) -> None:
    async with open_spool(spool_dir) as spool:
        table = spool.aux("control")
        with pytest.raises(ValueError):
            await table.put(b"", 1)
        with pytest.raises(ValueError):
            await table.put(b"k" * 1000, 1)
        with pytest.raises(TypeError):
            await table.put(b"k", object())
        assert spool.statistics().ops == 0


def test_invalid_table_names_are_refused(spool_dir: Path) -> None:
    from relay.spool.env import open_environment

    with pytest.raises(ValueError):
        open_environment(spool_dir, map_size=1 << 20, sync=False, aux_tables=("a", "a"))
    with pytest.raises(ValueError):
        open_environment(spool_dir, map_size=1 << 20, sync=False, aux_tables=("",))
