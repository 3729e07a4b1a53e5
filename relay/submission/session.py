"""One SMTP server session: the trio loop around a sans-IO `ServerConnection`.

Theory of operation
-------------------
The protocol object parses, answers what needs no decision and queues replies;
this loop owns the socket, the clock and the policy.  `next_event()` returns
NEED_DATA only once every buffered command has been handled, so the replies to
a whole pipelined group leave in one write just before the next read (RFC 2920).
Events that need a decision are answered here: AUTH against the user store and
the brute-force guard, MAIL/RCPT against the user's (or the trusted network's)
policy, the end of data through ingest — whose return means "committed to the
spool", so the 250 is sent only then.

Deadlines (RFC 5321 4.5.3.2): a complete command must arrive within
`command_timeout` of the previous reply (a client trickling bytes of one line
gains nothing), each read during DATA within `data_timeout`; past a deadline the
client gets `421 4.4.2` and is dropped.  Writes have the same deadlines, so a
client that does not read is dropped too.

Memory: a read is at most READ_SIZE bytes, command and AUTH lines are capped by
the protocol object, and message data is reserved in the service-wide
`MemoryBudget` as it arrives (at most the size limit per message), so the
total held by all sessions stays bounded whatever clients send.

STARTTLS: anything pipelined behind STARTTLS makes the protocol object fail the
session (CVE-2011-0411); bytes sent after our 220 but before the handshake reach
the TLS layer, which rejects them.  Nothing read in cleartext is ever replayed.
"""

from __future__ import annotations

import contextlib
import enum
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import trio

from relay.config import SubmissionConfig
from relay.errors import RemoteProtocolError, SpoolError, SpoolFullError
from relay.ingest import Ingest, IngestRejected, Trace, header_value
from relay.log import get_logger
from relay.net import SocketAddress, TlsCertificateStore, start_tls, tls_version_and_cipher
from relay.proto import (
    NEED_DATA,
    AuthRequest,
    ConnectionClosed,
    DataCommand,
    DataComplete,
    DataFailed,
    Hello,
    MailFrom,
    RcptTo,
    ServerConfig,
    ServerConnection,
    StartTLS,
)
from relay.submission.authguard import AuthGuard
from relay.submission.budget import MemoryBudget
from relay.submission.policy import (
    RELAY_DENIED,
    Refusal,
    TrustedNetworks,
    campaign_from_header,
    check_header_from,
    check_helo,
    check_recipient,
    check_sender,
    effective_limit,
    tenant_from_header,
    trace_protocol,
)
from relay.submission.users import User, UserStore

log = get_logger("submission")

#: Bytes asked of the socket per read.
READ_SIZE = 64 * 1024
#: Seconds a last reply (421, 554) may take to leave before the socket is closed.
FINAL_WRITE_TIMEOUT = 10.0
#: Seconds a closing TLS session may take to send its close_notify.
TLS_CLOSE_TIMEOUT = 2.0
#: Reserved at DATA when MAIL had no SIZE=; grown as the data arrives.
DATA_INITIAL_RESERVATION = 256 * 1024
#: Smallest growth of a reservation while data arrives.
DATA_GROWTH = 1024 * 1024
#: Slack over a declared SIZE= (it is the client's estimate, RFC 1870 2).
DECLARED_SIZE_SLACK = 64 * 1024
#: Longest wait for room in the memory budget before DATA is answered 452 4.3.1.
BUDGET_WAIT = 60.0
#: How much of a client-supplied user name a log line shows.
LOGGED_NAME_LENGTH = 128

_STORAGE_FULL = Refusal(452, "4.3.1", "Insufficient system storage, try again later")
_LOCAL_PROBLEM = Refusal(451, "4.3.0", "Temporary local problem, try again later")
_NO_RESOURCES = Refusal(452, "4.3.1", "Insufficient system resources, try again later")
_AUTH_INVALID = Refusal(535, "5.7.8", "Authentication credentials invalid")  # RFC 4954 6
_AUTH_LOCKED = Refusal(421, "4.7.0", "Too many authentication failures, try again later")
_AUTH_TEMPFAIL = Refusal(454, "4.7.0", "Temporary authentication failure")  # RFC 4954 6
_AUTH_REQUIRED = Refusal(530, "5.7.0", "Authentication required")  # RFC 4954 6
_TOO_MANY_MESSAGES = Refusal(421, "4.7.0", "Too many messages in one connection, reconnect")


class ListenerKind(enum.StrEnum):
    """What a listening port is for."""

    SUBMISSION = "submission"  # 587: cleartext, STARTTLS, AUTH required (RFC 6409)
    SUBMISSIONS = "submissions"  # 465: implicit TLS, AUTH required (RFC 8314)
    RELAY = "relay"  # 25: trusted networks only, no AUTH


@dataclass(slots=True)
class SubmissionStatistics:
    """Counters since start (see `SubmissionService.statistics`)."""

    sessions: int = 0  # sessions started (connections within the limits)
    active: int = 0  # sessions running now
    early_talkers: int = 0  # refused for sending before the greeting
    timeouts: int = 0  # dropped with 421 4.4.2
    tls_started: int = 0  # STARTTLS handshakes completed
    auth_successes: int = 0
    auth_failures: int = 0  # 535 5.7.8
    auth_lockouts: int = 0  # 421 4.7.0: AUTH from a locked-out address
    messages: int = 0  # acknowledged with 250 (durably stored)
    refusals: int = 0  # policy refusals: relay denied, sender/From not allowed
    spool_errors: int = 0  # 451/452 because the spool failed or was full
    budget_waits: int = 0  # sessions that had to wait for room in the memory budget


class SessionRegistry:
    """The running sessions, so that a stop can interrupt the idle ones."""

    def __init__(self) -> None:
        self._sessions: set[Session] = set()
        self.stopping = False

    def __len__(self) -> int:
        return len(self._sessions)

    def add(self, session: Session) -> None:
        self._sessions.add(session)

    def discard(self, session: Session) -> None:
        self._sessions.discard(session)

    def stop(self) -> None:
        """Sessions waiting for a command get 421 4.3.2 now; the others at their next
        wait for a command (never in the middle of a message)."""
        self.stopping = True
        for session in list(self._sessions):
            session.interrupt_if_idle()


@dataclass(frozen=True, slots=True)
class SessionContext:
    """What every session shares; built once by the service."""

    config: SubmissionConfig
    ingest: Ingest
    users: UserStore
    guard: AuthGuard
    clock: Callable[[], float]  # for the guard's windows
    budget: MemoryBudget
    tls: TlsCertificateStore | None
    trusted: TrustedNetworks
    protocols: Mapping[ListenerKind, ServerConfig]
    registry: SessionRegistry = field(default_factory=SessionRegistry)
    statistics: SubmissionStatistics = field(default_factory=SubmissionStatistics)


class Session:
    """One client connection, from the greeting to the close."""

    def __init__(
        self,
        ctx: SessionContext,
        kind: ListenerKind,
        stream: trio.abc.Stream,
        peer: SocketAddress,
    ) -> None:
        self.ctx = ctx
        self.kind = kind
        self.stream = stream
        self.peer = peer
        protocol = ctx.protocols[kind]
        self.conn = ServerConnection(protocol, tls_active=kind is ListenerKind.SUBMISSIONS)
        self.user: User | None = None
        self.trusted = kind is ListenerKind.RELAY and peer.host in ctx.trusted
        self.transactions = 0  # messages whose data ended (stored or refused)
        self._tls_version = ""
        self._tls_cipher = ""
        self._rcpt_limit = protocol.max_recipients
        self._mail: MailFrom | None = None
        self._rcpts = 0
        self._refusals = 0
        self._reserved = 0  # bytes of the memory budget held
        self._data_received = 0  # bytes read since the 354
        self._deadline = math.inf  # for the next complete command
        self._progress = False  # a command was handled since the last read
        self._idle_scope: trio.CancelScope | None = None
        self._log: Any = log.bind(peer=peer.host, listener=kind.value)

    # --- life cycle -----------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection; returns when it is over (the caller closes the socket)."""
        ctx = self.ctx
        ctx.registry.add(self)
        ctx.statistics.sessions += 1
        ctx.statistics.active += 1
        try:
            if self.kind is ListenerKind.SUBMISSIONS:
                await self._implicit_tls()
            if await self._greet():
                await self._converse()
        except trio.TooSlowError:
            self._log.info("client does not read its replies; dropped")
        finally:
            ctx.statistics.active -= 1
            ctx.registry.discard(self)
            self._release_reservation()
        if isinstance(self.stream, trio.SSLStream):
            with trio.move_on_after(TLS_CLOSE_TIMEOUT):
                await self.stream.aclose()  # close_notify; the socket closes either way

    def interrupt_if_idle(self) -> None:
        """Cancel the wait for the next command, if that is what the session is doing."""
        if self._idle_scope is not None:
            self._idle_scope.cancel()

    async def _implicit_tls(self) -> None:
        tls = self.ctx.tls
        if tls is None:  # the service refuses to open such a listener
            raise RuntimeError("implicit TLS listener without a certificate")
        self.stream = await start_tls(
            self.stream,
            tls.context,
            server_side=True,
            handshake_timeout=self.ctx.config.tls_handshake_timeout,
        )
        self._note_tls()

    def _note_tls(self) -> None:
        assert isinstance(self.stream, trio.SSLStream)
        self._tls_version, self._tls_cipher = tls_version_and_cipher(self.stream)

    async def _greet(self) -> bool:
        """Wait out the greeting delay watching for early talkers, then greet."""
        conn = self.conn
        delay = self.ctx.config.greeting_delay
        if delay > 0:
            with trio.move_on_after(delay):
                data = await self._read()
                if not data:
                    return False  # gone before the greeting
                conn.receive_data(data)
        if conn.early_talker:  # RFC 5321 4.3.1 / 3.1: refuse and close
            self.ctx.statistics.early_talkers += 1
            self._log.info("early talker refused")
            conn.send_greeting("Protocol error: commands sent before the greeting", code=554)
            await self._write_final()
            return False
        conn.send_greeting()
        self._deadline = trio.current_time() + self.ctx.config.command_timeout
        return True

    async def _converse(self) -> None:
        conn = self.conn
        while True:
            try:
                event = conn.next_event()
            except RemoteProtocolError as exc:
                self._log.info("protocol violation; closing", reply=exc.code, text=exc.text)
                await self._write_final()
                return
            if event is NEED_DATA:
                if not await self._receive():
                    return
                continue
            if isinstance(event, ConnectionClosed):
                await self._write_final()
                return
            self._progress = True
            if isinstance(event, Hello):
                refusal = check_helo(event.name)
                if refusal is None:
                    conn.accept()
                else:
                    self._reply(refusal)
            elif isinstance(event, MailFrom):
                self._on_mail(event)
            elif isinstance(event, RcptTo):
                self._on_rcpt(event)
            elif isinstance(event, DataCommand):
                await self._on_data()
            elif isinstance(event, DataComplete):
                await self._on_data_complete(event)
            elif isinstance(event, DataFailed):
                self._on_data_failed(event)
            elif isinstance(event, AuthRequest):
                await self._on_auth(event)
            elif isinstance(event, StartTLS):
                await self._on_starttls()

    # --- I/O ------------------------------------------------------------------------

    async def _receive(self) -> bool:
        """Write the queued replies, then read more; False when the session is over.

        One cancel scope covers both: when replies are written the deadline is
        fresh (a command was just answered), so it bounds the write as well.
        """
        conn = self.conn
        cfg = self.ctx.config
        out = conn.data_to_send()
        in_data = conn.phase == "data"
        if in_data:
            deadline = trio.current_time() + cfg.data_timeout
        elif out or self._progress:
            deadline = self._deadline = trio.current_time() + cfg.command_timeout
        else:
            deadline = self._deadline  # still the same command: no extension
        self._progress = False
        data = b""
        with trio.CancelScope(deadline=deadline) as scope:
            if out:
                await self.stream.send_all(out)
            if not in_data:
                self._idle_scope = scope
                if self.ctx.registry.stopping:
                    scope.cancel()
            data = await self._read()
        self._idle_scope = None
        if scope.cancelled_caught:
            if self.ctx.registry.stopping and not in_data:
                conn.shutdown("Server shutting down", enhanced="4.3.2")
            else:
                self.ctx.statistics.timeouts += 1
                self._log.info("timeout; dropped", phase=conn.phase)
                conn.shutdown("Timeout waiting for client input", enhanced="4.4.2")
            await self._write_final()
            return False
        if in_data and data and not await self._reserve_for(len(data)):
            return False
        conn.receive_data(data)
        return True

    async def _read(self) -> bytes:
        data = await self.stream.receive_some(READ_SIZE)
        return data if isinstance(data, bytes) else bytes(data)

    async def _write_final(self) -> None:
        """Send what is queued (a last 421/221/554) if the client takes it soon."""
        out = self.conn.data_to_send()
        if not out:
            return
        with (
            trio.move_on_after(FINAL_WRITE_TIMEOUT),
            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
        ):
            await self.stream.send_all(out)

    # --- the memory budget ------------------------------------------------------------

    async def _reserve_for(self, nbytes: int) -> bool:
        """Account for `nbytes` more of message data, growing the reservation."""
        self._data_received += nbytes
        if self._data_received <= self._reserved:
            return True
        ceiling = self.conn.message_size_limit + READ_SIZE  # the reader drops the rest
        if self._reserved >= ceiling:
            return True
        target = min(ceiling, max(self._data_received, 2 * self._reserved, DATA_GROWTH))
        if not await self._acquire(target - self._reserved, self.ctx.config.data_timeout):
            self._log.warning("memory budget exhausted during DATA; dropped")
            self.conn.shutdown("Insufficient system resources", enhanced="4.3.1")
            await self._write_final()
            return False
        return True

    async def _acquire(self, nbytes: int, timeout: float) -> bool:
        """Reserve `nbytes` more, waiting at most `timeout` seconds for room."""
        budget = self.ctx.budget
        if budget.try_acquire(nbytes):
            self._reserved += nbytes
            return True
        self.ctx.statistics.budget_waits += 1
        with trio.move_on_after(timeout):
            await budget.acquire(nbytes)
            self._reserved += nbytes
            return True
        return False

    def _release_reservation(self, keep: int = 0) -> None:
        """Give back the reservation beyond `keep` bytes."""
        surplus = self._reserved - keep
        if surplus > 0:
            self.ctx.budget.release(surplus)
            self._reserved = keep

    # --- events -----------------------------------------------------------------------

    def _refuse(self, refusal: Refusal) -> None:
        """A policy refusal; too many of them end the session like protocol errors."""
        self.conn.send_reply(refusal.code, refusal.enhanced, refusal.text)
        self.ctx.statistics.refusals += 1
        self._refusals += 1
        limit = self.ctx.config.max_errors
        if limit and self._refusals >= limit:
            self.conn.shutdown("Too many refused commands", enhanced="4.7.0")

    def _reply(self, refusal: Refusal) -> None:
        self.conn.send_reply(refusal.code, refusal.enhanced, refusal.text)

    async def _on_starttls(self) -> None:
        tls = self.ctx.tls
        if tls is None:  # STARTTLS is announced only with a certificate
            self._reply(Refusal(454, "4.7.0", "TLS not available"))
            return
        conn = self.conn
        conn.accept()
        out = conn.data_to_send()
        with trio.fail_after(self.ctx.config.command_timeout):
            await self.stream.send_all(out)
        self.stream = await start_tls(
            self.stream,
            tls.context,
            server_side=True,
            handshake_timeout=self.ctx.config.tls_handshake_timeout,
        )
        conn.tls_established()
        self._note_tls()
        self.ctx.statistics.tls_started += 1

    async def _on_auth(self, event: AuthRequest) -> None:
        ctx = self.ctx
        ip = self.peer.host
        name = event.username[:LOGGED_NAME_LENGTH]
        delay = ctx.guard.delay(ip, ctx.clock())
        if delay > 0:  # answer later, and see whether the address got locked meanwhile
            await trio.sleep(delay)
        if ctx.guard.locked(ip, ctx.clock()):
            ctx.statistics.auth_lockouts += 1
            self._log.warning("AUTH refused: address locked out", user=name)
            self._reply(_AUTH_LOCKED)
            return
        user: User | None = None
        # PLAIN may ask to act as someone else (RFC 4616 authzid): not supported.
        if not event.authzid or event.authzid == event.username:
            try:
                user = await ctx.users.authenticate(event.username, event.password)
            except Exception:
                self._log.exception("credential check failed", user=name)
                self._reply(_AUTH_TEMPFAIL)
                return
        if user is None:
            locked = ctx.guard.failure(ip, ctx.clock())
            ctx.statistics.auth_failures += 1
            self._log.warning(
                "AUTH failed", user=name, mechanism=event.mechanism, locked_out=locked
            )
            self._reply(_AUTH_INVALID)
            return
        self.user = user
        protocol = ctx.protocols[self.kind]
        self.conn.message_size_limit = effective_limit(
            user.max_message_size, protocol.max_message_size
        )
        self._rcpt_limit = effective_limit(user.max_recipients, protocol.max_recipients)
        ctx.statistics.auth_successes += 1
        self._log.info("authenticated", user=user.name, mechanism=event.mechanism)
        self.conn.accept()

    def _on_mail(self, event: MailFrom) -> None:
        if self.transactions >= self.ctx.config.max_messages_per_connection:
            self._reply(_TOO_MANY_MESSAGES)
            return
        if self.kind is ListenerKind.RELAY:
            if not self.trusted:
                self._log.info("relay denied", sender=event.sender[:LOGGED_NAME_LENGTH])
                self._refuse(RELAY_DENIED)
                return
        else:
            user = self.user
            if user is None:  # the protocol requires AUTH first; never relay without
                self._reply(_AUTH_REQUIRED)
                return
            refusal = check_sender(user, event.sender)
            if refusal is not None:
                self._log.info(
                    "sender refused", user=user.name, sender=event.sender[:LOGGED_NAME_LENGTH]
                )
                self._refuse(refusal)
                return
            try:
                self.ctx.ingest.check_rate(user.name, user.rate_per_minute)
            except IngestRejected as exc:
                self.conn.send_reply(exc.code, exc.enhanced, exc.text)
                return
        self._mail = event
        self._rcpts = 0
        self.conn.accept()

    def _on_rcpt(self, event: RcptTo) -> None:
        refusal = check_recipient(event.recipient, self._rcpts, self._rcpt_limit)
        if refusal is not None:
            self._reply(refusal)
            return
        self._rcpts += 1
        self.conn.accept()

    async def _on_data(self) -> None:
        limit = self.conn.message_size_limit
        declared = self._mail.size if self._mail is not None else None
        if declared is not None:
            initial = min(limit, declared + declared // 8 + DECLARED_SIZE_SLACK)
        else:
            initial = min(limit, DATA_INITIAL_RESERVATION)
        self._data_received = 0
        if not await self._acquire(initial, min(BUDGET_WAIT, self.ctx.config.command_timeout)):
            self._log.warning("memory budget exhausted; DATA deferred")
            self._reply(_NO_RESOURCES)
            return
        self.conn.accept()

    def _on_data_failed(self, event: DataFailed) -> None:
        self._release_reservation()
        self.transactions += 1
        self._mail = None
        self.conn.send_reply(event.code, event.enhanced, event.text)

    async def _on_data_complete(self, event: DataComplete) -> None:
        content = event.content
        # From here on the content and its prepared copy are what is held.
        self._release_reservation(keep=2 * len(content))
        self.transactions += 1
        self._mail = None
        try:
            await self._store(event)
        finally:
            self._release_reservation()

    async def _store(self, event: DataComplete) -> None:
        ctx = self.ctx
        cfg = ctx.config
        content = event.content
        user = self.user
        refusal = check_header_from(user if self.kind is not ListenerKind.RELAY else None, content)
        if refusal is not None:
            self._log.info("header From refused", user=user.name if user else "")
            self._refuse(refusal)
            return
        tenant = user.tenant if user is not None else ""
        if cfg.allow_tenant_header and cfg.tenant_header:
            named = tenant_from_header(header_value(content, cfg.tenant_header))
            if isinstance(named, Refusal):
                self._reply(named)
                return
            if named:
                tenant = named
        campaign = ""
        if cfg.campaign_header:
            label = campaign_from_header(header_value(content, cfg.campaign_header))
            if isinstance(label, Refusal):
                self._reply(label)
                return
            campaign = label
        conn = self.conn
        trace = Trace(
            helo=conn.hello_name or "",
            client_ip=self.peer.host,
            protocol=trace_protocol(
                esmtp=conn.esmtp, tls=conn.tls_active, authenticated=user is not None
            ),
            tls_version=self._tls_version,
            tls_cipher=self._tls_cipher,
            auth_user=user.name if user is not None else "",
        )
        mail = event.mail
        try:
            meta = await ctx.ingest.accept(
                mail.sender,
                event.recipients,
                content,
                trace=trace,
                tenant=tenant,
                campaign=campaign,
                smtputf8=mail.smtputf8,
                body_8bit=mail.body == "8BITMIME",
                strip_headers=tuple(h for h in (cfg.tenant_header, cfg.campaign_header) if h),
            )
        except IngestRejected as exc:
            conn.send_reply(exc.code, exc.enhanced, exc.text)
            return
        except SpoolFullError:
            ctx.statistics.spool_errors += 1
            self._log.warning("spool full; message deferred")
            self._reply(_STORAGE_FULL)
            return
        except SpoolError as exc:
            ctx.statistics.spool_errors += 1
            self._log.error("spool error; message deferred", error=repr(exc))
            self._reply(_LOCAL_PROBLEM)
            return
        except Exception:
            ctx.statistics.spool_errors += 1
            self._log.exception("ingest failed; message deferred")
            self._reply(_LOCAL_PROBLEM)
            return
        ctx.statistics.messages += 1
        conn.accept(f"Ok: queued as {meta.id}")
