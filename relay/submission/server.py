"""The submission service: listeners on 587, 465 and 25, one session per connection.

Theory of operation: every listening socket of the service is served by one
`relay.net.Server`, so the connection limits (in total and per client address)
count across the three ports.  The local port of an accepted connection tells
which kind of listener took it, and so which protocol profile and policy apply:

=============  ==========================  ===========================================
kind           default (config key)        policy
=============  ==========================  ===========================================
submission     127.0.0.1:5870 (listen)     STARTTLS; AUTH and MAIL need TLS
                                           (`require_tls`), MAIL needs AUTH (530 5.7.0)
submissions    127.0.0.1:4650 (listen_tls) implicit TLS (RFC 8314); MAIL needs AUTH
relay          none (relay_port.listen)    STARTTLS offered, no AUTH; only clients in
                                           `trusted_networks` may relay (else 554 5.7.1)
=============  ==========================  ===========================================

`stop(grace)` closes the listeners, sends `421 4.3.2` to sessions waiting for a
command, lets transactions in progress finish, and cancels whatever still runs
when the grace period ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import trio

from relay.config import Config, parse_hostport
from relay.errors import ConfigError
from relay.ingest import Ingest
from relay.log import get_logger
from relay.net import (
    ConnectionLimits,
    Server,
    ServerStatistics,
    SocketAddress,
    TlsCertificateStore,
    listener_address,
    open_listeners,
    start_tls,
)
from relay.proto import ServerConfig, format_reply
from relay.submission.authguard import AuthGuard
from relay.submission.budget import MemoryBudget
from relay.submission.policy import TrustedNetworks
from relay.submission.session import (
    READ_SIZE,
    ListenerKind,
    Session,
    SessionContext,
    SubmissionStatistics,
)
from relay.submission.users import UserStore

log = get_logger("submission")

#: Message bytes all sessions together may hold in memory (see MemoryBudget);
#: raised to fit at least one message of the largest size.
DEFAULT_DATA_MEMORY = 1 << 30
#: Longest AUTH answer delay for an address with recent failures.
MAX_AUTH_DELAY = 5.0


@dataclass(slots=True)
class SubmissionListeners:
    """Bound listening sockets, by kind (port 0 in tests: read the ports back with
    `addresses`)."""

    submission: list[trio.SocketListener] = field(default_factory=list)
    submissions: list[trio.SocketListener] = field(default_factory=list)
    relay: list[trio.SocketListener] = field(default_factory=list)

    def items(self) -> Iterator[tuple[ListenerKind, trio.SocketListener]]:
        for kind in ListenerKind:
            for listener in getattr(self, kind.value):
                yield kind, listener

    def addresses(self) -> dict[ListenerKind, list[SocketAddress]]:
        """The bound addresses of each kind."""
        out: dict[ListenerKind, list[SocketAddress]] = {kind: [] for kind in ListenerKind}
        for kind, listener in self.items():
            out[kind].append(listener_address(listener))
        return out

    def close(self) -> None:
        for _kind, listener in self.items():
            listener.socket.close()


async def open_submission_listeners(
    config: Config, *, reuse_port: bool = True
) -> SubmissionListeners:
    """Bind the configured addresses (submission.listen, submission.listen_tls,
    relay_port.listen); on failure nothing stays open."""
    wanted = {
        ListenerKind.SUBMISSION: config.submission.listen,
        ListenerKind.SUBMISSIONS: config.submission.listen_tls,
        ListenerKind.RELAY: config.relay_port.listen,
    }
    listeners = SubmissionListeners()
    try:
        for kind, addresses in wanted.items():
            pairs = []
            for address in addresses:
                try:
                    pairs.append(parse_hostport(address))
                except ValueError as exc:
                    raise ConfigError(f"{kind.value} listen address: {exc}") from None
            getattr(listeners, kind.value).extend(
                await open_listeners(pairs, reuse_port=reuse_port)
            )
    except BaseException:
        listeners.close()
        raise
    return listeners


def protocol_profiles(
    config: Config, ingest: Ingest, *, starttls: bool
) -> dict[ListenerKind, ServerConfig]:
    """The protocol settings of each kind of listener."""
    sub = config.submission
    sizes = [s for s in (sub.max_message_size, ingest.limits.max_message_size) if s > 0]
    if not sizes:
        raise ConfigError("submission.max_message_size: a size limit is required")
    base = ServerConfig(
        hostname=config.server.hostname,
        pipelining=True,
        max_message_size=min(sizes),  # RFC 1870: announced in EHLO, enforced twice
        max_recipients=min(sub.max_recipients, ingest.limits.max_recipients),
        max_errors=sub.max_errors,
        bare_line_ending=sub.bare_line_ending,
        command_line_limit=sub.max_command_line,
        text_line_limit=sub.max_text_line,
        starttls=starttls,
    )
    submission = replace(
        base,
        auth_mechanisms=("PLAIN", "LOGIN"),
        require_tls_for_auth=sub.require_tls,  # RFC 8314 / RFC 4954 4: credentials in TLS
        require_tls_for_mail=sub.require_tls,
        require_auth_for_mail=True,  # RFC 6409 4.3: submission requires authentication
    )
    return {
        ListenerKind.SUBMISSION: submission,
        ListenerKind.SUBMISSIONS: submission,
        ListenerKind.RELAY: base,
    }


class SubmissionService:
    """SMTP submission (587 STARTTLS, 465 implicit TLS) and the trusted port 25.

    `serve` opens the configured listeners (or uses `listeners`, already bound)
    and runs until `stop`.  `clock` is the time source of the AUTH guard.
    `data_memory` bounds the message data held by all sessions together.
    """

    def __init__(
        self,
        config: Config,
        ingest: Ingest,
        users: UserStore,
        tls: TlsCertificateStore | None,
        clock: Callable[[], float] = time.monotonic,
        *,
        listeners: SubmissionListeners | None = None,
        data_memory: int = DEFAULT_DATA_MEMORY,
    ) -> None:
        sub = config.submission
        self.config = config
        self._listeners = listeners
        protocols = protocol_profiles(config, ingest, starttls=tls is not None)
        largest = max(p.max_message_size for p in protocols.values())
        auth = config.auth
        guard = AuthGuard(
            max_failures=auth.max_failures,
            window=auth.failure_window,
            lockout=auth.lockout,
            delay_step=auth.failure_delay,
            max_delay=MAX_AUTH_DELAY,
        )
        self._ctx = SessionContext(
            config=sub,
            ingest=ingest,
            users=users,
            guard=guard,
            clock=clock,
            budget=MemoryBudget(max(data_memory, 2 * (largest + READ_SIZE))),
            tls=tls,
            trusted=TrustedNetworks(config.relay_port.trusted_networks),
            protocols=protocols,
        )
        self.limits = ConnectionLimits(
            max_connections=sub.max_connections,
            max_connections_per_address=sub.max_connections_per_ip,
            tls_handshake_timeout=sub.tls_handshake_timeout,
        )
        self._server: Server | None = None
        self._kinds: dict[int, ListenerKind] = {}
        self._stop_grace: float | None = None
        self._started = False
        #: Set when `serve` has returned: every session is over (finished or cancelled).
        self.stopped = trio.Event()

    # --- what the application reads -----------------------------------------------

    @property
    def addresses(self) -> dict[ListenerKind, list[SocketAddress]]:
        """The bound addresses of each kind (empty lists before `serve` bound them)."""
        if self._listeners is None:
            return {kind: [] for kind in ListenerKind}
        return self._listeners.addresses()

    def statistics(self) -> SubmissionStatistics:
        """A copy of the session counters."""
        return replace(self._ctx.statistics)

    def connection_statistics(self) -> ServerStatistics | None:
        """The listener's counters (accepted, refused over the limits, TLS failures)."""
        return None if self._server is None else self._server.statistics()

    @property
    def guard(self) -> AuthGuard:
        """The AUTH brute-force guard (for operators' tools and tests)."""
        return self._ctx.guard

    @property
    def budget(self) -> MemoryBudget:
        """The message-data memory budget shared by the sessions."""
        return self._ctx.budget

    # --- running ---------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the listeners and serve until `stop()` has run its course."""
        if self._started:
            raise RuntimeError("SubmissionService.serve() can run only once")
        self._started = True
        if self._listeners is None:
            self._listeners = await open_submission_listeners(self.config)
        listeners = self._listeners
        try:
            self._kinds = self._kinds_by_port(listeners)
        except BaseException:
            listeners.close()
            raise
        server = self._server = Server(
            [listener for _kind, listener in listeners.items()],
            self._handle,
            over_limit=self._over_limit,
            limits=self.limits,
            name="submission",
        )
        if self._stop_grace is not None:
            server.stop(grace=self._stop_grace)
        addresses = listeners.addresses()
        log.info(
            "submission listening",
            **{kind.value: [f"{h}:{p}" for h, p in addresses[kind]] for kind in ListenerKind},
            trusted_networks=list(self.config.relay_port.trusted_networks),
            tls=self._ctx.tls is not None,
        )
        try:
            await server.serve(task_status=task_status)
        finally:
            self.stopped.set()

    def stop(self, grace: float) -> None:
        """Stop accepting; idle sessions get 421 4.3.2 now, transactions in progress
        may finish within `grace` seconds, then the rest is cancelled."""
        if self._stop_grace is not None:
            return
        self._stop_grace = grace
        self._ctx.registry.stop()
        if self._server is not None:
            self._server.stop(grace=grace)

    def _kinds_by_port(self, listeners: SubmissionListeners) -> dict[int, ListenerKind]:
        kinds: dict[int, ListenerKind] = {}
        for kind, listener in listeners.items():
            port = listener_address(listener).port
            if kinds.setdefault(port, kind) is not kind:
                raise ConfigError(
                    f"port {port} is configured for both {kinds[port].value} and {kind.value}"
                )
            if kind is ListenerKind.SUBMISSIONS and self._ctx.tls is None:
                raise ConfigError("submission.listen_tls needs a TLS certificate")
        return kinds

    async def _handle(
        self, stream: trio.abc.Stream, peer: SocketAddress, local: SocketAddress
    ) -> None:
        await Session(self._ctx, self._kinds[local.port], stream, peer).run()

    async def _over_limit(
        self, stream: trio.abc.Stream, peer: SocketAddress, local: SocketAddress
    ) -> None:
        """RFC 5321 3.1 / 4.5.4.1: a 421 greeting to a connection over the limits."""
        tls = self._ctx.tls
        if self._kinds.get(local.port) is ListenerKind.SUBMISSIONS and tls is not None:
            stream = await start_tls(
                stream,
                tls.context,
                server_side=True,
                handshake_timeout=self.limits.refuse_timeout,
            )
        hostname = self.config.server.hostname
        await stream.send_all(
            format_reply(421, None, f"{hostname} Too many connections, try again later")
        )
