"""The load generator: sessions pushing messages to one SMTP server, and counting.

Theory of operation
-------------------
`run_send` starts `sessions` trio tasks.  Each opens a connection (implicit TLS,
or EHLO then STARTTLS, then AUTH when asked), then claims message numbers from
the shared run one at a time and sends them as transactions on that connection
until it has sent `messages_per_connection`, the server closes, or the run has no
more work; then it says QUIT and, while there is work, connects again.

A transaction is relay.proto's ClientConnection at work: `send_mail` queues MAIL,
every RCPT and DATA, which leave in one write when the server announced
PIPELINING (RFC 2920); the content follows the 354 in one write; the latency
measured is from the moment that write returned to the moment the end-of-data
reply was parsed.  A 421 the server sent on its own after a reply (e.g. "too many
messages") is noticed before the next message is claimed, so it costs no message.

Failures never stop a run: a refused message is counted under its deciding
reply ("451 4.3.0"), a broken connection under what broke it ("timeout",
"connection lost", "connect: ..."), and the session reconnects after a backoff.
A session backs off after a connection that completed no transaction (refused,
421 greeting, TLS failure ...) and gives up after MAX_CONSECUTIVE_FAILURES such
connections in a row; the run aborts (stops every session) only when carrying on
cannot help: the server does not offer STARTTLS or AUTH as asked, or refuses the
credentials.  The run always ends: by count, by duration, or at `time_limit`.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Final

import trio

from relay.errors import RemoteProtocolError, TlsHandshakeError
from relay.loadgen.message import BenchMessage, MessageFactory
from relay.loadgen.plainio import fast_io
from relay.loadgen.ratelimit import Pacer
from relay.loadgen.sendconfig import SendConfig
from relay.loadgen.sendreport import (
    AcceptedMessage,
    SendProgress,
    SendReport,
    Tally,
    queue_id_of,
    reply_key,
)
from relay.loadgen.watchdog import IdleWatchdog, Watched
from relay.model import TlsMode
from relay.net import client_context, connect, start_tls
from relay.proto import (
    AuthReply,
    ClientConnection,
    ClientEvent,
    Greeting,
    HelloReply,
    NeedData,
    ReadyForData,
    Reply,
    ServiceClosing,
    StartTLSReply,
    TransactionComplete,
    TransactionResult,
)

__all__ = ["MAX_CONSECUTIVE_FAILURES", "run_send"]

#: Connections in a row that complete no transaction before a session gives up.
MAX_CONSECUTIVE_FAILURES: Final = 20
#: Reconnection backoff: doubles from the first value up to the second (seconds).
BACKOFF: Final = (0.05, 1.0)
#: Bytes asked for per read.
RECEIVE_SIZE: Final = 64 * 1024
#: How long QUIT may take before the connection is just closed (seconds).
QUIT_TIMEOUT: Final = 5.0

ProgressCallback = Callable[[SendProgress], None]
AcceptedCallback = Callable[[AcceptedMessage], None]


class _Link:
    """A connection and its protocol object: flush, then read until an event.

    Reads are timed by the run's IdleWatchdog through `watched`, which cancels the
    connection's scope when a reply is late; the caller turns that into
    trio.TooSlowError.
    """

    __slots__ = ("_stream", "conn", "io", "watched")

    def __init__(self, stream: trio.abc.Stream, conn: ClientConnection, watched: Watched) -> None:
        self._stream = stream
        self.io = fast_io(stream)  # what reads and writes go through
        self.conn = conn
        self.watched = watched

    @property
    def stream(self) -> trio.abc.Stream:
        """The connection (plain, or TLS once established)."""
        return self._stream

    @stream.setter
    def stream(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self.io = fast_io(stream)

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            await self.io.send_all(data)

    async def next(self) -> ClientEvent:
        conn = self.conn
        while True:
            event = conn.next_event()
            if not isinstance(event, NeedData):
                return event
            await self.flush()
            watched = self.watched
            watched.waiting = True
            data = await self.io.receive_some(RECEIVE_SIZE)
            watched.waiting = False
            watched.reads += 1
            conn.receive_data(data if type(data) is bytes else bytes(data))


@dataclass(slots=True)
class _SessionState:
    """One connection attempt, as the session's error handling needs it."""

    connected: bool = False  # TCP connected (else a failure is a connect failure)
    in_flight: bool = False  # a message is between MAIL and its final reply
    completed: int = 0  # transactions that got their final reply, delivered or not


def _failure_reply(result: TransactionResult) -> Reply:
    """The reply that decided a transaction was not delivered."""
    if result.mail.code >= 300:
        return result.mail
    refused = [r.reply for r in result.recipients if r.reply.code >= 300]
    if not result.accepted and refused:
        return refused[0]
    if result.data is not None and result.data.code != 354:
        return result.data
    if result.final is not None:
        return result.final
    return refused[0] if refused else result.mail


def _describe(exc: BaseException, connected: bool) -> str:
    """The error key of an exception that ended a connection."""
    if isinstance(exc, trio.TooSlowError):
        return "timeout"
    if isinstance(exc, TlsHandshakeError):
        return "tls handshake"
    if isinstance(exc, RemoteProtocolError):
        return "connection lost" if exc.code == 421 else f"protocol error {exc.code}"
    if not connected and isinstance(exc, OSError):
        return f"connect: {exc.strerror or type(exc).__name__}"
    return "connection lost"


class _Run:
    """One load run: the shared work counter, the tally and the sessions."""

    def __init__(self, config: SendConfig, on_accepted: AcceptedCallback | None) -> None:
        self.config = config
        self.address = config.address
        self.tally = Tally()
        self.on_accepted = on_accepted
        self.factory = MessageFactory(
            run_id=config.run_id,
            sender=config.sender,
            size=config.size,
            recipients=config.recipients,
            domains=config.domains,
        )
        self.pacer = Pacer(config.rate) if config.rate else None
        self.watchdog = IdleWatchdog(config.reply_timeout)
        self.tls_context: ssl.SSLContext | None = None
        self.tls_hostname: str | None = config.tls_hostname
        if config.tls != "none":
            if config.cafile is not None:
                self.tls_context = client_context(TlsMode.REQUIRED_VERIFY, cafile=config.cafile)
                self.tls_hostname = config.tls_hostname or config.host
            else:
                self.tls_context = client_context(TlsMode.REQUIRED)
        self.next_sequence = 0
        self.start = 0.0
        self.end = float("inf")  # when a run by duration stops claiming
        self.last_accept: float | None = None
        self.aborted: str | None = None
        self.sessions_scope: trio.CancelScope | None = None

    # --- the run -------------------------------------------------------------------

    def progress(self) -> SendProgress:
        tally = self.tally
        return SendProgress(
            elapsed=trio.current_time() - self.start,
            attempted=tally.attempted,
            accepted=tally.accepted,
            failed=tally.failed + sum(tally.connection_errors.values()),
            total=self.config.total,
            duration=self.config.duration,
        )

    def has_work(self) -> bool:
        if self.aborted is not None:
            return False
        total = self.config.total
        if total is not None:
            return self.next_sequence < total
        return trio.current_time() < self.end

    async def claim(self) -> int | None:
        """The next message number, after the rate cap allows it; None when done."""
        if not self.has_work():
            return None
        if self.pacer is not None:
            await self.pacer.wait()
            if not self.has_work():
                return None
        sequence = self.next_sequence
        self.next_sequence += 1
        return sequence

    def abort(self, reason: str) -> None:
        """Stop every session: carrying on cannot succeed."""
        if self.aborted is None:
            self.aborted = reason
        if self.sessions_scope is not None:
            self.sessions_scope.cancel()

    async def run(self, on_progress: ProgressCallback | None, interval: float) -> SendReport:
        cfg = self.config
        started_at = time.time()
        self.start = trio.current_time()
        if cfg.duration is not None:
            self.end = self.start + cfg.duration
        with trio.move_on_after(cfg.time_limit) as limit:
            async with trio.open_nursery() as outer:
                outer.start_soon(self.watchdog.run)
                if on_progress is not None:
                    outer.start_soon(self._ticker, on_progress, interval)
                async with trio.open_nursery() as sessions:
                    self.sessions_scope = sessions.cancel_scope
                    for _ in range(cfg.sessions):
                        sessions.start_soon(self._session)
                outer.cancel_scope.cancel()
        finished = trio.current_time()
        if on_progress is not None:
            on_progress(self.progress())
        if self.aborted is not None:
            stopped_by = "aborted"
        elif limit.cancelled_caught:
            stopped_by = "time limit"
        elif self.has_work():
            stopped_by = "sessions failed"
        else:
            stopped_by = "messages" if cfg.total is not None else "duration"
        end = self.last_accept if self.last_accept is not None else finished
        return SendReport.build(
            cfg.describe(),
            self.tally,
            started_at=started_at,
            elapsed=end - self.start,
            stopped_by=stopped_by,
            aborted=self.aborted,
        )

    async def _ticker(self, on_progress: ProgressCallback, interval: float) -> None:
        while True:
            on_progress(self.progress())
            await trio.sleep(interval)

    # --- sessions -----------------------------------------------------------------------

    async def _session(self) -> None:
        failures = 0
        while self.has_work():
            state = _SessionState()
            try:
                await self._connection(state)
            except (
                OSError,
                trio.BrokenResourceError,
                trio.ClosedResourceError,
                trio.TooSlowError,
                TlsHandshakeError,
                RemoteProtocolError,
            ) as exc:
                key = _describe(exc, state.connected)
                if state.in_flight:
                    self.tally.failed += 1
                    self.tally.errors[key] += 1
                else:
                    self.tally.connection_errors[key] += 1
            if state.completed:  # the server talks SMTP: reconnect at once
                failures = 0
                continue
            failures += 1
            if failures >= MAX_CONSECUTIVE_FAILURES:
                return
            first, cap = BACKOFF
            await trio.sleep(min(cap, first * 2 ** (failures - 1)))

    async def _connection(self, state: _SessionState) -> None:
        """One connection's life (`state` tells how far it got)."""
        cfg = self.config
        stream: trio.abc.Stream = await connect(
            self.address, cfg.port, connect_timeout=cfg.connect_timeout
        )
        state.connected = True
        self.tally.connections += 1
        implicit = cfg.tls == "implicit"
        conn = ClientConnection(cfg.helo, tls_active=implicit, pipelining=cfg.pipelining)
        with trio.CancelScope() as scope:
            link = _Link(stream, conn, self.watchdog.watch(scope))
            try:
                if implicit:
                    link.stream = await self._handshake(stream)
                await self._converse(link, state)
                return
            finally:
                self.watchdog.forget(link.watched)
                await trio.aclose_forcefully(link.stream)
        raise trio.TooSlowError  # a reply took longer than reply_timeout

    async def _converse(self, link: _Link, state: _SessionState) -> None:
        """Open the session, send messages while there is work, QUIT."""
        cfg = self.config
        if not await self._open(link):
            return
        sent = 0
        while not cfg.messages_per_connection or sent < cfg.messages_per_connection:
            if self._closing(link):
                return
            sequence = await self.claim()
            if sequence is None:
                break
            sent += 1
            if not await self._transaction(link, state, self.factory.build(sequence)):
                return
        await self._quit(link)

    async def _handshake(self, stream: trio.abc.Stream) -> trio.abc.Stream:
        assert self.tls_context is not None
        return await start_tls(
            stream,
            self.tls_context,
            server_side=False,
            server_hostname=self.tls_hostname,
            handshake_timeout=self.config.connect_timeout,
        )

    def _refused(self, event: ClientEvent, expected: type) -> bool:
        """Count a connection-level refusal: the event is not `expected` or not positive."""
        reply = getattr(event, "reply", None)
        if isinstance(event, expected) and reply is not None and reply.code < 400:
            return False
        key = reply_key(reply) if isinstance(reply, Reply) else type(event).__name__
        self.tally.connection_errors[key] += 1
        return True

    async def _open(self, link: _Link) -> bool:
        """Greeting, EHLO, STARTTLS and AUTH as configured; False if refused."""
        cfg, conn = self.config, link.conn
        if self._refused(await link.next(), Greeting):
            return False
        conn.send_ehlo()
        if self._refused(await link.next(), HelloReply):
            return False
        if cfg.tls == "starttls":
            if not conn.extensions.starttls:
                self.abort("the server does not offer STARTTLS")
                return False
            conn.send_starttls()
            if self._refused(await link.next(), StartTLSReply):
                return False
            link.stream = await self._handshake(link.stream)
            conn.tls_established()
            conn.send_ehlo()
            if self._refused(await link.next(), HelloReply):
                return False
        if cfg.auth is not None:
            user, password = cfg.auth
            mechanisms = conn.extensions.auth_mechanisms
            if "PLAIN" in mechanisms:
                conn.send_auth_plain(user, password)
            elif "LOGIN" in mechanisms:
                conn.send_auth_login(user, password)
            else:
                self.abort("the server offers neither AUTH PLAIN nor AUTH LOGIN")
                return False
            event = await link.next()
            # RFC 4954 says 235; test servers such as Postfix's smtp-sink say 250.
            if isinstance(event, AuthReply) and event.reply.code >= 300:
                self.abort(f"authentication failed: {event.reply}")
                return False
            if self._refused(event, AuthReply):
                return False
        return True

    def _closing(self, link: _Link) -> bool:
        """True if the server already said 421 (or closed) after its last reply."""
        event = link.conn.next_event()
        if isinstance(event, NeedData):
            return False
        if isinstance(event, ServiceClosing):
            self.tally.connection_errors[reply_key(event.reply)] += 1
        return True

    async def _transaction(self, link: _Link, state: _SessionState, message: BenchMessage) -> bool:
        """Send one message; False if the server closed the connection (421)."""
        conn, tally = link.conn, self.tally
        content = message.content
        conn.send_mail(self.config.sender, message.recipients, size=len(content))
        tally.attempted += 1
        state.in_flight = True
        event = await link.next()
        sent_at = 0.0
        if isinstance(event, ReadyForData):
            conn.send_data(content)
            await link.flush()
            sent_at = trio.current_time()
            event = await link.next()
        state.in_flight = False
        if isinstance(event, TransactionComplete):
            state.completed += 1
            self._complete(event.result, message, sent_at)
            return True
        if isinstance(event, ServiceClosing):
            tally.failed += 1
            tally.errors[reply_key(event.reply)] += 1
            return False
        raise RemoteProtocolError(451, "4.5.0", f"unexpected {type(event).__name__}")

    def _complete(self, result: TransactionResult, message: BenchMessage, sent_at: float) -> None:
        """Count a transaction that got its final reply, delivered or not."""
        tally = self.tally
        if not result.delivered or result.final is None:
            tally.failed += 1
            tally.errors[reply_key(_failure_reply(result))] += 1
            tally.recipients_rejected += len(message.recipients)
            return
        now = trio.current_time()
        latency = now - sent_at
        accepted = len(result.accepted)
        tally.accepted += 1
        tally.recipients_accepted += accepted
        if accepted < len(message.recipients):
            tally.recipients_rejected += len(message.recipients) - accepted
            for recipient in result.recipients:
                if recipient.reply.code >= 300:
                    tally.errors[reply_key(recipient.reply)] += 1
        tally.bytes_accepted += len(message.content)
        tally.latency.record(latency)
        self.last_accept = now
        if self.on_accepted is not None:
            self.on_accepted(
                AcceptedMessage(message.bench_id, time.time(), queue_id_of(result.final), latency)
            )

    async def _quit(self, link: _Link) -> None:
        """QUIT politely; a server that does not answer in time is just left."""
        if link.conn.closed:
            return
        link.conn.send_quit()
        gone = (trio.BrokenResourceError, trio.ClosedResourceError, RemoteProtocolError, OSError)
        with trio.move_on_after(min(QUIT_TIMEOUT, self.config.reply_timeout)), suppress(*gone):
            await link.next()


async def run_send(
    config: SendConfig,
    *,
    on_progress: ProgressCallback | None = None,
    progress_interval: float = 0.25,
    on_accepted: AcceptedCallback | None = None,
) -> SendReport:
    """Run a load test against `config.host`:`config.port` and report.

    `on_progress` is called every `progress_interval` seconds and once at the end;
    `on_accepted` once per message the server accepted (for --ids-out).  Returns
    when the work is done, the time is up, or the run was aborted (see
    `SendReport.stopped_by` and `.aborted`).
    """
    return await _Run(config, on_accepted).run(on_progress, progress_interval)
