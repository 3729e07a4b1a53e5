"""A fake destination MX for tests: the benchmark sink, recording everything.

`open_fake_mx` is `relay.loadgen.open_sink` with the defaults a test wants: it
keeps every accepted message with its content, and with `tls` (trustme files
from `relay.testing.tls.make_tls_files`) it offers STARTTLS with a certificate
the test's CA can verify::

    async with open_fake_mx(tls=tls_files, faults=Faults(disconnect_after=3)) as mx:
        ... deliver to 127.0.0.1:mx.port ...
        await mx.wait_for(3)
        [message] = messages_for(mx, "user@example.test")

Any other `SinkConfig` field can be passed by name.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from relay.loadgen import ReceivedMessage, Sink, SinkConfig, open_sink
from relay.testing.tls import TlsFiles

__all__ = ["messages_for", "open_fake_mx"]


@asynccontextmanager
async def open_fake_mx(
    *, tls: TlsFiles | None = None, hostname: str = "mx.test", **options: Any
) -> AsyncIterator[Sink]:
    """A sink on 127.0.0.1 (a free port) recording messages with their content."""
    settings: dict[str, Any] = {"record": True, "record_content": True, **options}
    if tls is not None:
        settings.setdefault("starttls", not settings.get("implicit_tls", False))
        settings.update(cert_file=tls.cert_file, key_file=tls.key_file)
    async with open_sink(
        SinkConfig(host="127.0.0.1", port=0, hostname=hostname, **settings)
    ) as sink:
        yield sink


def messages_for(sink: Sink, recipient: str) -> list[ReceivedMessage]:
    """The accepted messages addressed to `recipient` (case-insensitive)."""
    wanted = recipient.lower()
    return [m for m in sink.records if any(r.lower() == wanted for r in m.recipients)]
