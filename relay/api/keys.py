"""API keys: bearer tokens for the HTTP API, stored hashed in the accounts spool.

A key is ``rk_<id>_<secret>``: a 12-character public id (what `relay key list`
shows and `relay key revoke` takes) and 32 random bytes (256 bits) as base64url.
Only SHA-256 of the whole token is stored, in the "apikeys" aux table of the
accounts environment that every shard shares, so a revocation takes effect on
every shard at once (each request reads the record; LMDB reads cost microseconds).

Why no password KDF (scrypt/argon2) here, unlike SMTP passwords: a KDF makes
guessing a *low-entropy* secret expensive.  A 256-bit random secret cannot be
guessed at any speed (2^255 tries on average), so a slow hash would add cost to
every request and no security; a fast hash still means a stolen table does not
reveal usable keys.  The comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from relay.errors import RelayError

TOKEN_PREFIX = "rk_"
RECORD_VERSION = 1
_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
_TOKEN = re.compile(r"rk_([a-z2-7]{12})_([A-Za-z0-9_-]{43})")
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DOMAIN = re.compile(
    r"\.?(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
)


class ApiKeyError(RelayError):
    """A key management request that cannot be carried out."""


class AuxStore(Protocol):
    """The part of relay.spool's AuxTable this module uses."""

    def get(self, key: bytes) -> Any | None: ...
    def items(self, prefix: bytes = b"") -> Iterator[tuple[bytes, Any]]: ...
    async def put(self, key: bytes, value: Any) -> None: ...
    async def delete(self, key: bytes) -> bool: ...


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key's record (never the secret)."""

    id: str
    tenant: str
    domains: tuple[str, ...]  # sender domains; ".example.com" allows subdomains; "*" any
    rate_per_minute: int = 0  # messages per minute, as for SMTP users; 0 = unlimited
    created: float = 0.0
    description: str = ""
    digest: bytes = field(default=b"", repr=False)

    @property
    def account(self) -> str:
        """The name its rate limit is counted under (ingest.check_rate)."""
        return f"apikey:{self.id}"

    def may_send_from(self, domain: str) -> bool:
        """True if `domain` is one of the key's domains (or under a ".domain" entry)."""
        domain = domain.lower().rstrip(".")
        for allowed in self.domains:
            if allowed == "*" or domain == allowed:
                return True
            if allowed.startswith(".") and domain.endswith(allowed):
                return True
        return False


def token_digest(token: str) -> bytes:
    """SHA-256 of a token (what is stored)."""
    return hashlib.sha256(token.encode("utf-8")).digest()


def normalise_domains(domains: Sequence[str]) -> tuple[str, ...]:
    """Lower-cased, checked sender domains; ApiKeyError naming a bad one."""
    out = []
    for raw in domains:
        domain = raw.strip().lower().rstrip(".")
        if domain != "*" and (not _DOMAIN.fullmatch(domain) or len(domain) > 253):
            raise ApiKeyError(f"invalid sender domain {raw!r}")
        out.append(domain)
    if not out:
        raise ApiKeyError("a key needs at least one sender domain")
    return tuple(dict.fromkeys(out))


def _encode(key: ApiKey) -> list[Any]:
    return [
        RECORD_VERSION,
        key.id,
        key.tenant,
        list(key.domains),
        key.rate_per_minute,
        key.created,
        key.description,
        key.digest,
    ]


def _decode(value: Any) -> ApiKey:
    if not isinstance(value, list | tuple) or len(value) != 8 or value[0] != RECORD_VERSION:
        raise ApiKeyError("unreadable API key record (unknown version or layout)")
    _, key_id, tenant, domains, rate, created, description, digest = value
    return ApiKey(
        id=key_id,
        tenant=tenant,
        domains=tuple(domains),
        rate_per_minute=rate,
        created=float(created),
        description=description,
        digest=bytes(digest),
    )


class ApiKeyStore:
    """API keys in an aux table (the accounts environment's "apikeys")."""

    def __init__(self, table: AuxStore, *, clock: Callable[[], float] = time.time) -> None:
        self._table = table
        self._clock = clock

    async def create(
        self,
        tenant: str,
        domains: Sequence[str],
        *,
        rate_per_minute: int = 0,
        description: str = "",
    ) -> tuple[ApiKey, str]:
        """A new key and its token (shown once: only its hash is kept)."""
        if not _TENANT.fullmatch(tenant):
            raise ApiKeyError(f"invalid tenant {tenant!r}: 1-64 letters, digits, '.', '_' or '-'")
        if rate_per_minute < 0:
            raise ApiKeyError("the rate must not be negative")
        if len(description) > 200 or not description.isprintable():
            raise ApiKeyError("the description must be printable, at most 200 characters")
        checked = normalise_domains(domains)
        while True:
            key_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(12))
            if self._table.get(key_id.encode("ascii")) is None:
                break
        token = f"{TOKEN_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        key = ApiKey(
            id=key_id,
            tenant=tenant,
            domains=checked,
            rate_per_minute=rate_per_minute,
            created=self._clock(),
            description=description,
            digest=token_digest(token),
        )
        await self._table.put(key_id.encode("ascii"), _encode(key))
        return key, token

    def get(self, key_id: str) -> ApiKey | None:
        if not key_id.isascii() or not 0 < len(key_id) <= 64:
            return None
        value = self._table.get(key_id.encode("ascii"))
        return None if value is None else _decode(value)

    def list(self) -> list[ApiKey]:
        """Every key, by id."""
        return [_decode(value) for _key, value in self._table.items()]

    async def revoke(self, key_id: str) -> None:
        """Delete a key: requests with it fail from now on, on every shard."""
        if self.get(key_id) is None or not await self._table.delete(key_id.encode("ascii")):
            raise ApiKeyError(f"no API key {key_id!r}")

    def authenticate(self, token: str) -> ApiKey | None:
        """The key a bearer token belongs to, or None."""
        m = _TOKEN.fullmatch(token)
        if m is None:
            return None
        key = self.get(m.group(1))
        if key is None or not hmac.compare_digest(key.digest, token_digest(token)):
            return None
        return key
