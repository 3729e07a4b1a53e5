"""Outbound TLS: one client context per mode, and the memory of failed handshakes.

An opportunistic STARTTLS whose handshake fails is retried in clear on a new
connection (RFC 7435: better unauthenticated cleartext than nothing), and the host
is remembered for `tls_failure_memory` seconds, so that its next connections go in
clear at once instead of failing the handshake again every time.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

import trio

from relay.model import TlsMode
from relay.net.tls import client_context

#: Entries the failure memory keeps at most (the oldest are forgotten first).
MAX_REMEMBERED = 10_000


class TlsContexts:
    """Client contexts, built once per mode (they are costly) and shared by sessions.

    REQUIRED_VERIFY trusts `ca_file` when given, else the system's CA store.
    """

    def __init__(self, ca_file: str | Path | None = None) -> None:
        self._ca_file = ca_file or None
        self._contexts: dict[TlsMode, ssl.SSLContext] = {}

    def get(self, mode: TlsMode) -> ssl.SSLContext:
        """The context for `mode` (not DISABLED)."""
        context = self._contexts.get(mode)
        if context is None:
            if mode is TlsMode.REQUIRED_VERIFY:
                context = client_context(mode, cafile=self._ca_file)
            else:
                context = client_context(mode)
            self._contexts[mode] = context
        return context


class TlsFailureMemory:
    """Hosts whose opportunistic TLS handshake failed recently, as (host, port)."""

    def __init__(self, duration: float, *, clock: Callable[[], float] | None = None) -> None:
        self._duration = duration
        self._clock = clock or trio.current_time
        self._until: dict[tuple[str, int], float] = {}

    def remember(self, host: str, port: int) -> None:
        """The handshake with host:port failed just now."""
        now = self._clock()
        self._until.pop((host, port), None)
        self._until[(host, port)] = now + self._duration
        if len(self._until) > MAX_REMEMBERED:
            for key in list(self._until)[: len(self._until) - MAX_REMEMBERED]:
                del self._until[key]

    def failed_recently(self, host: str, port: int) -> bool:
        """True while host:port is remembered (then STARTTLS is not tried)."""
        until = self._until.get((host, port))
        if until is None:
            return False
        if until <= self._clock():
            del self._until[(host, port)]
            return False
        return True

    def __len__(self) -> int:
        return len(self._until)
