"""Submission users: credentials hashed with scrypt, and what each user may do.

Users live in the spool environment's "users" aux table, so they are as durable as
the mail and a second process (`relay user ...`) can manage them while relay runs.
A password is never stored: only an scrypt hash (RFC 7914; memory-hard) with a
random salt and its parameters, so the cost can be raised later without breaking
old records.  scrypt takes tens of milliseconds on purpose, so verification runs in
a worker thread, and a short-lived cache of successful verifications (keyed by a
keyed hash of the password, never the password) keeps reconnecting senders cheap.
A cache entry is valid only while the user's stored hash is the one it was
verified against, so a password changed by another process (`relay user passwd`)
takes effect at once.  `authenticate` is what a server calls: the cache first,
then at most one scrypt per distinct credentials in flight (fifty sessions of one
sender opening together cost one scrypt), on a bounded number of threads (scrypt
takes 16 MiB each with relay's parameters).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from relay.errors import RelayError

SCRYPT_N = 1 << 14
SCRYPT_R = 8
SCRYPT_P = 1
RECORD_VERSION = 1


class UserError(RelayError):
    """A user management request that cannot be carried out (unknown user, bad name, ...)."""


class AuxStore(Protocol):
    """The part of relay.spool's AuxTable this module uses."""

    def get(self, key: bytes) -> Any | None: ...
    def items(self, prefix: bytes = b"") -> Iterator[tuple[bytes, Any]]: ...
    async def put(self, key: bytes, value: Any) -> None: ...
    async def delete(self, key: bytes) -> bool: ...


@dataclass(frozen=True, slots=True)
class User:
    """A submission account and its policy."""

    name: str
    tenant: str
    sender_domains: tuple[str, ...]  # MAIL FROM and header From domains it may use
    rate_per_minute: int = 0  # messages per minute; 0 = unlimited
    max_recipients: int = 0  # per message; 0 = the server's limit
    max_message_size: int = 0  # bytes; 0 = the server's limit
    password_hash: bytes = field(default=b"", repr=False)
    salt: bytes = field(default=b"", repr=False)
    scrypt_n: int = SCRYPT_N

    def may_send_from(self, domain: str) -> bool:
        """True if `domain` is one of the user's sender domains (or a subdomain of a
        listed `.example.com`-style entry)."""
        domain = domain.lower().rstrip(".")
        for allowed in self.sender_domains:
            allowed = allowed.lower()
            if allowed == "*" or domain == allowed:
                return True
            if allowed.startswith(".") and domain.endswith(allowed):
                return True
        return False


def hash_password(password: str, salt: bytes, n: int = SCRYPT_N) -> bytes:
    """scrypt(password, salt) with relay's parameters (`n`: the CPU/memory cost)."""
    return hashlib.scrypt(
        password.encode("utf-8", "surrogatepass"),
        salt=salt,
        n=n,
        r=SCRYPT_R,
        p=SCRYPT_P,
        maxmem=64 << 20,
        dklen=32,
    )


def generate_password() -> str:
    """A strong random password (about 143 bits)."""
    return secrets.token_urlsafe(18)


def _encode(user: User) -> list[Any]:
    return [
        RECORD_VERSION,
        user.name,
        user.tenant,
        list(user.sender_domains),
        user.rate_per_minute,
        user.max_recipients,
        user.max_message_size,
        user.password_hash,
        user.salt,
        user.scrypt_n,
    ]


def _decode(value: Any) -> User:
    # The spool decodes msgpack arrays as tuples; accept lists too (other tables).
    if not isinstance(value, list | tuple) or len(value) != 10 or value[0] != RECORD_VERSION:
        raise UserError("unreadable user record (unknown version or layout)")
    _, name, tenant, domains, rate, max_rcpt, max_size, pw_hash, salt, n = value
    return User(
        name=name,
        tenant=tenant,
        sender_domains=tuple(domains),
        rate_per_minute=rate,
        max_recipients=max_rcpt,
        max_message_size=max_size,
        password_hash=bytes(pw_hash),
        salt=bytes(salt),
        scrypt_n=n,
    )


def _check_name(name: str) -> str:
    if not name or len(name) > 256 or any(c.isspace() or ord(c) < 32 for c in name):
        raise UserError(f"invalid user name {name!r}: 1-256 characters, no spaces or controls")
    return name


class _Flight:
    """One scrypt verification in progress, awaited by every session that needs it."""

    __slots__ = ("done", "failed", "user")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.user: User | None = None
        self.failed = False


class UserStore:
    """Accounts in the spool's "users" aux table.

    `scrypt_n` is the cost given to new and changed passwords (existing records
    keep theirs); lower it only where speed matters more than strength (tests).
    `verify_threads` bounds the scrypt computations running at once.
    """

    def __init__(
        self,
        table: AuxStore,
        *,
        cache_ttl: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        scrypt_n: int = SCRYPT_N,
        verify_threads: int | None = None,
        max_cached: int = 100_000,
    ) -> None:
        if scrypt_n < 2 or scrypt_n & (scrypt_n - 1):
            raise ValueError("scrypt_n must be a power of two greater than 1")
        self._table = table
        self._cache_ttl = cache_ttl
        self._clock = clock
        self.scrypt_n = scrypt_n
        self._max_cached = max_cached
        self._cache_key = os.urandom(32)
        # fingerprint -> (expiry, the stored hash it was verified against)
        self._verified: dict[tuple[str, bytes], tuple[float, bytes]] = {}
        self._flights: dict[tuple[str, bytes], _Flight] = {}
        self._threads = trio.CapacityLimiter(verify_threads or max(1, os.cpu_count() or 1))

    def get(self, name: str) -> User | None:
        value = self._table.get(name.encode("utf-8"))
        return None if value is None else _decode(value)

    def list(self) -> list[User]:
        return [_decode(v) for _, v in self._table.items()]

    async def add(
        self,
        name: str,
        password: str,
        *,
        tenant: str,
        sender_domains: tuple[str, ...],
        rate_per_minute: int = 0,
        max_recipients: int = 0,
        max_message_size: int = 0,
    ) -> User:
        """Create a user; UserError if it exists."""
        _check_name(name)
        if self.get(name) is not None:
            raise UserError(f"user {name!r} exists already")
        if not sender_domains:
            raise UserError("a user needs at least one sender domain")
        salt = os.urandom(16)
        user = User(
            name=name,
            tenant=tenant or name,
            sender_domains=tuple(d.lower() for d in sender_domains),
            rate_per_minute=rate_per_minute,
            max_recipients=max_recipients,
            max_message_size=max_message_size,
            password_hash=hash_password(password, salt, self.scrypt_n),
            salt=salt,
            scrypt_n=self.scrypt_n,
        )
        await self._table.put(name.encode("utf-8"), _encode(user))
        return user

    async def set_password(self, name: str, password: str) -> None:
        user = self.get(name)
        if user is None:
            raise UserError(f"no user {name!r}")
        salt = os.urandom(16)
        updated = User(
            name=user.name,
            tenant=user.tenant,
            sender_domains=user.sender_domains,
            rate_per_minute=user.rate_per_minute,
            max_recipients=user.max_recipients,
            max_message_size=user.max_message_size,
            password_hash=hash_password(password, salt, self.scrypt_n),
            salt=salt,
            scrypt_n=self.scrypt_n,
        )
        await self._table.put(name.encode("utf-8"), _encode(updated))
        self._verified = {k: v for k, v in self._verified.items() if k[0] != name}

    async def remove(self, name: str) -> None:
        if not await self._table.delete(name.encode("utf-8")):
            raise UserError(f"no user {name!r}")
        self._verified = {k: v for k, v in self._verified.items() if k[0] != name}

    def _fingerprint(self, name: str, password: str) -> tuple[str, bytes]:
        digest = hmac.new(self._cache_key, password.encode("utf-8", "surrogatepass"), "sha256")
        return name, digest.digest()

    def cached(self, name: str, password: str) -> User | None:
        """The user if these credentials were verified recently (no scrypt cost)."""
        key = self._fingerprint(name, password)
        entry = self._verified.get(key)
        if entry is None:
            return None
        expires, verified_hash = entry
        user = self.get(name)
        if expires < self._clock() or user is None or user.password_hash != verified_hash:
            del self._verified[key]
            return None
        return user

    def verify(self, name: str, password: str) -> User | None:
        """The user if the password is right, else None (slow: scrypt; servers use
        `authenticate`, which runs it in a worker thread)."""
        user = self.get(name)
        if not self._matches(user, password):
            return None
        assert user is not None
        self._remember(name, password, user)
        return user

    def _matches(self, user: User | None, password: str) -> bool:
        """The scrypt comparison alone (thread-safe: touches no shared state)."""
        if user is None:
            # Spend the same effort for unknown users so timing does not reveal them.
            hash_password(password, b"\0" * 16, self.scrypt_n)
            return False
        candidate = hash_password(password, user.salt, user.scrypt_n)
        return hmac.compare_digest(candidate, user.password_hash)

    def _remember(self, name: str, password: str, user: User) -> None:
        if len(self._verified) >= self._max_cached:
            now = self._clock()
            self._verified = {k: v for k, v in self._verified.items() if v[0] >= now}
            if len(self._verified) >= self._max_cached:
                self._verified.clear()
        key = self._fingerprint(name, password)
        self._verified[key] = (self._clock() + self._cache_ttl, user.password_hash)

    async def authenticate(self, name: str, password: str) -> User | None:
        """The user if the credentials are right, else None: the cache first, then
        scrypt in a worker thread, shared by every caller with the same credentials."""
        user = self.cached(name, password)
        if user is not None:
            await trio.lowlevel.checkpoint()
            return user
        key = self._fingerprint(name, password)
        flight = self._flights.get(key)
        if flight is not None:
            await flight.done.wait()
            if flight.failed:
                raise UserError("credential verification failed")
            return flight.user
        flight = self._flights[key] = _Flight()
        try:
            user = self.get(name)
            if await trio.to_thread.run_sync(self._matches, user, password, limiter=self._threads):
                assert user is not None
                self._remember(name, password, user)
                flight.user = user
        except BaseException:
            flight.failed = True
            raise
        finally:
            del self._flights[key]
            flight.done.set()
        return flight.user
