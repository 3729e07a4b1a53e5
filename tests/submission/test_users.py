"""Users in the spool's aux table: scrypt, the verification cache, shared verification."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from relay.spool import Spool, open_spool
from relay.submission import users as users_module
from relay.submission.users import UserError, UserStore

N = 1 << 8  # cheap: these tests are about behaviour, not strength


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    async with open_spool(tmp_path / "accounts", map_size=16 << 20, sync=False) as spool:
        yield spool


async def test_add_authenticate_and_records_round_trip(spool: Spool) -> None:
    store = UserStore(spool.aux("users"), scrypt_n=N)
    added = await store.add("acme", "s3cret", tenant="", sender_domains=("Acme.Test",))
    assert added.tenant == "acme" and added.sender_domains == ("acme.test",)
    assert added.scrypt_n == N
    # a second store (another process) reads the same record back
    other = UserStore(spool.aux("users"), scrypt_n=N)
    assert await other.authenticate("acme", "s3cret") == added
    assert await other.authenticate("acme", "wrong") is None
    assert await other.authenticate("nobody", "s3cret") is None
    assert [u.name for u in other.list()] == ["acme"]
    with pytest.raises(UserError):
        await other.add("acme", "x", tenant="t", sender_domains=("a.test",))
    with pytest.raises(UserError):
        await other.add("bad name", "x", tenant="t", sender_domains=("a.test",))


async def test_cache_skips_scrypt_and_follows_password_changes(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0
    real = users_module.hash_password

    def counting(password: str, salt: bytes, n: int = users_module.SCRYPT_N) -> bytes:
        nonlocal calls
        calls += 1
        return real(password, salt, n)

    store = UserStore(spool.aux("users"), scrypt_n=N)
    await store.add("acme", "old", tenant="t", sender_domains=("acme.test",))
    monkeypatch.setattr(users_module, "hash_password", counting)
    assert await store.authenticate("acme", "old") is not None
    assert await store.authenticate("acme", "old") is not None
    assert calls == 1  # the second login came from the cache
    # `relay user passwd` in another process: the cached login stops working at once
    other = UserStore(spool.aux("users"), scrypt_n=N)
    await other.set_password("acme", "new")
    assert store.cached("acme", "old") is None
    assert await store.authenticate("acme", "old") is None
    assert await store.authenticate("acme", "new") is not None
    await other.remove("acme")
    assert store.cached("acme", "new") is None


async def test_concurrent_logins_share_one_scrypt(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0
    real = users_module.hash_password

    def counting(password: str, salt: bytes, n: int = users_module.SCRYPT_N) -> bytes:
        nonlocal calls
        calls += 1
        return real(password, salt, n)

    store = UserStore(spool.aux("users"), scrypt_n=N, verify_threads=2)
    await store.add("acme", "pw", tenant="t", sender_domains=("acme.test",))
    monkeypatch.setattr(users_module, "hash_password", counting)
    results = []

    async def login(password: str) -> None:
        results.append(await store.authenticate("acme", password))

    async with trio.open_nursery() as nursery:
        for _ in range(50):
            nursery.start_soon(login, "pw")
        for _ in range(3):
            nursery.start_soon(login, "guess")
    assert sum(r is not None for r in results) == 50
    assert sum(r is None for r in results) == 3
    assert calls == 2  # one for the right password, one shared by the three guesses


def test_scrypt_cost_must_be_a_power_of_two() -> None:
    with pytest.raises(ValueError):
        UserStore(None, scrypt_n=1000)  # type: ignore[arg-type]
