"""Helpers for the submission tests: a running service on loopback and small clients.

Everything is real: listeners bound to port 0 on 127.0.0.1, TLS with trustme
certificates, the LMDB spool in a temporary directory.  Users get a low scrypt
cost (a constructor parameter) so that a thousand logins stay cheap.
"""

from __future__ import annotations

import base64
import dataclasses
import smtplib
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from relay.config import (
    AuthConfig,
    Config,
    RelayPortConfig,
    ServerConfig,
    SubmissionConfig,
)
from relay.fastparse import ReplyReader, dot_stuff
from relay.ingest import Ingest, IngestLimits
from relay.net import TlsCertificateStore, open_listeners
from relay.spool import Spool, open_spool
from relay.submission import ListenerKind, SubmissionListeners, SubmissionService, UserStore
from relay.testing.tls import TlsFiles, make_tls_files

SAFETY = 30.0  # seconds: only a net against hanging, never a measure
HOSTNAME = "relay.test"
CLIENT_NAME = "client.test"
USER = "acme"
PASSWORD = "correct horse battery staple"
OTHER_USER = "globex"
OTHER_PASSWORD = "another password entirely"
TEST_SCRYPT_N = 1 << 8  # cheap on purpose: many logins per test run


def message(
    sender: str = "news@acme.test",
    to: str = "someone@example.net",
    subject: str = "hello",
    body: str = "Hello there.\r\n",
    extra_headers: Sequence[str] = (),
) -> bytes:
    head = [f"From: {sender}", f"To: {to}", f"Subject: {subject}", *extra_headers]
    return ("\r\n".join(head) + "\r\n\r\n" + body).encode()


def make_config(
    *,
    submission: dict[str, Any] | None = None,
    auth: dict[str, Any] | None = None,
    trusted: tuple[str, ...] = ("127.0.0.1/32",),
) -> Config:
    """A configuration for tests: short timeouts are given per test."""
    settings: dict[str, Any] = {
        "command_timeout": SAFETY,
        "data_timeout": SAFETY,
        "tls_handshake_timeout": SAFETY,
        **(submission or {}),
    }
    sub = dataclasses.replace(SubmissionConfig(listen=(), listen_tls=()), **settings)
    return Config(
        server=ServerConfig(hostname=HOSTNAME),
        submission=sub,
        relay_port=RelayPortConfig(listen=(), trusted_networks=trusted),
        auth=dataclasses.replace(AuthConfig(failure_delay=0.0), **(auth or {})),
    )


@dataclass
class Harness:
    """A running SubmissionService and what it stands on."""

    service: SubmissionService
    spool: Spool
    users: UserStore
    ingest: Ingest
    tls_files: TlsFiles
    config: Config
    tls_store: TlsCertificateStore

    def port(self, kind: ListenerKind) -> int:
        return self.service.addresses[kind][0].port

    @property
    def submission_port(self) -> int:
        return self.port(ListenerKind.SUBMISSION)

    @property
    def submissions_port(self) -> int:
        return self.port(ListenerKind.SUBMISSIONS)

    @property
    def relay_port(self) -> int:
        return self.port(ListenerKind.RELAY)

    def client_context(self) -> ssl.SSLContext:
        """A client context that verifies the server against the test CA."""
        return ssl.create_default_context(cafile=str(self.tls_files.ca_file))

    def queued(self) -> list[tuple[str, bytes]]:
        """(id, content) of every message in the spool."""
        return [(m.id, self.spool.read_content(m.id)) for m in self.spool.iter_queued()]


@asynccontextmanager
async def running_service(
    tmp_path: Path,
    config: Config | None = None,
    *,
    map_size: int = 64 << 20,
    ingest_limits: IngestLimits | None = None,
    data_memory: int | None = None,
    sync: bool = False,
) -> AsyncIterator[Harness]:
    """A service with all three listeners on 127.0.0.1 port 0, users "acme" and
    "globex", and a spool under `tmp_path`."""
    config = config or make_config()
    tls_files = make_tls_files(tmp_path / "tls")
    store = TlsCertificateStore(tls_files.cert_file, tls_files.key_file)
    async with open_spool(tmp_path / "spool", map_size=map_size, sync=sync) as spool:
        users = UserStore(spool.aux("users"), scrypt_n=TEST_SCRYPT_N)
        await users.add(USER, PASSWORD, tenant="acme-tenant", sender_domains=("acme.test",))
        await users.add(
            OTHER_USER, OTHER_PASSWORD, tenant="globex", sender_domains=("globex.test",)
        )
        ingest = Ingest(spool, hostname=HOSTNAME, limits=ingest_limits or IngestLimits())
        listeners = SubmissionListeners(
            submission=await open_listeners([("127.0.0.1", 0)]),
            submissions=await open_listeners([("127.0.0.1", 0)]),
            relay=await open_listeners([("127.0.0.1", 0)]),
        )
        extra = {} if data_memory is None else {"data_memory": data_memory}
        service = SubmissionService(
            config, ingest, users, store, trio.current_time, listeners=listeners, **extra
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(service.serve)
            try:
                yield Harness(service, spool, users, ingest, tls_files, config, store)
            finally:
                service.stop(grace=0)


# --- smtplib, in a worker thread -------------------------------------------------------


def smtp(port: int, **kwargs: Any) -> smtplib.SMTP:
    """smtplib.SMTP to 127.0.0.1 (an explicit local name: smtplib would ask DNS)."""
    return smtplib.SMTP("127.0.0.1", port, local_hostname=CLIENT_NAME, timeout=SAFETY, **kwargs)


def smtp_ssl(port: int, context: ssl.SSLContext) -> smtplib.SMTP_SSL:
    return smtplib.SMTP_SSL(
        "127.0.0.1", port, local_hostname=CLIENT_NAME, timeout=SAFETY, context=context
    )


# --- a raw client over trio, for byte-exact conversations ----------------------------


class RawClient:
    """Sends bytes exactly as given and reads whole replies."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._replies = ReplyReader()

    @classmethod
    async def connect(cls, port: int, *, local_address: str | None = None) -> RawClient:
        with trio.fail_after(SAFETY):
            stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=local_address)
        return cls(stream)

    async def send(self, data: bytes) -> None:
        with trio.fail_after(SAFETY):
            await self.stream.send_all(data)

    async def reply(self) -> tuple[int, str | None, list[str]]:
        """The next reply; (0, None, []) when the server closed the connection."""
        with trio.fail_after(SAFETY):
            while True:
                parsed = self._replies.next_reply()
                if parsed is not None:
                    return parsed
                data = await self.stream.receive_some(65536)
                if not data:
                    return (0, None, [])
                self._replies.feed(bytes(data))

    async def replies(self, count: int) -> list[tuple[int, str | None, list[str]]]:
        return [await self.reply() for _ in range(count)]

    async def command(self, line: str) -> tuple[int, str | None, list[str]]:
        await self.send(line.encode() + b"\r\n")
        return await self.reply()

    async def starttls(self, context: ssl.SSLContext) -> None:
        code, _, _ = await self.command("STARTTLS")
        assert code == 220
        ssl_stream = trio.SSLStream(self.stream, context, server_hostname="127.0.0.1")
        with trio.fail_after(SAFETY):
            await ssl_stream.do_handshake()
        self.stream = ssl_stream
        self._replies = ReplyReader()

    async def closed(self) -> bool:
        """True if the server closes the connection (after any replies it sends)."""
        with trio.fail_after(SAFETY):
            try:
                while await self.stream.receive_some(65536):
                    pass
            except trio.BrokenResourceError:
                pass
        return True

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


def plain_response(user: str, password: str) -> str:
    """The AUTH PLAIN initial response (RFC 4616)."""
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


async def tls_client(harness: Harness) -> RawClient:
    """A client on the submission port after greeting, EHLO, STARTTLS and EHLO."""
    client = await RawClient.connect(harness.submission_port)
    assert (await client.reply())[0] == 220
    assert (await client.command(f"EHLO {CLIENT_NAME}"))[0] == 250
    await client.starttls(harness.client_context())
    assert (await client.command(f"EHLO {CLIENT_NAME}"))[0] == 250
    return client


async def authenticated_client(
    harness: Harness, user: str = USER, password: str = PASSWORD
) -> RawClient:
    """A client on the submission port, TLS up and logged in."""
    client = await tls_client(harness)
    code, enhanced, _ = await client.command(f"AUTH PLAIN {plain_response(user, password)}")
    assert (code, enhanced) == (235, "2.7.0")
    return client


async def send_message(
    client: RawClient,
    content: bytes,
    sender: str = "news@acme.test",
    recipients: Sequence[str] = ("someone@example.net",),
) -> tuple[int, str | None, list[str]]:
    """MAIL, RCPTs, DATA (each must succeed) and the content; the final reply."""
    assert (await client.command(f"MAIL FROM:<{sender}>"))[0] == 250
    for rcpt in recipients:
        assert (await client.command(f"RCPT TO:<{rcpt}>"))[0] == 250
    assert (await client.command("DATA"))[0] == 354
    await client.send(dot_stuff(content))
    return await client.reply()
