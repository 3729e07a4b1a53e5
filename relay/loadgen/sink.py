"""The sink: a fast fake MX that accepts mail, counts it and throws it away.

Theory of operation
-------------------
A `relay.net.Server` accepts connections and runs `_Session` for each, a loop
around one `relay.proto.ServerConnection`: NEED_DATA writes every queued reply in
one write and reads once; each event is answered at once.  The message data never
costs an await per line: the DataReader inside the protocol object takes each
read whole, and DataComplete arrives with the content joined.

Decisions, in the order they are taken for MAIL: receiver policy (messages per
connection -> 421 and close; message rate per client -> 450), then the injected
fault of the command (delay, then a 4xx or 5xx drawn from the seeded RNG).  RCPT,
DATA and the end of data only have faults (and RCPT scripted replies).  The
concurrent-connection policy is the Server's per-address limit, answered with
421 before the greeting.

A client silent for `idle_timeout` seconds gets ``421 4.4.2`` and is closed; the
sink's one IdleWatchdog task times every session's reads (relay.loadgen.watchdog),
so a read costs no cancel scope.

Counting is per sink (one process); with `relay bench sink --workers N` each
worker process has its own sink and the supervisor adds the figures up.  Arrival
times are wall-clock (`time.time()`) so they compare with a sender in another
process; everything timed inside (delays, rates, idle timeouts) uses trio's clock.
"""

from __future__ import annotations

import itertools
import random
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import trio

from relay.errors import RemoteProtocolError
from relay.loadgen.headers import header_ids
from relay.loadgen.plainio import fast_io
from relay.loadgen.ratelimit import TokenBuckets
from relay.loadgen.sinkconfig import CommandFault, SinkConfig
from relay.loadgen.watchdog import IdleWatchdog, Watched
from relay.net import (
    ConnectionLimits,
    Server,
    SocketAddress,
    TlsCertificateStore,
    certificate_store,
    open_listeners,
    start_tls,
)
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

__all__ = ["ReceivedMessage", "Sink", "SinkStatistics", "open_sink"]

#: Bytes asked for per read: a whole pipelined group or a large chunk of data.
RECEIVE_SIZE: Final = 256 * 1024
#: Seconds the 421 to an idle client may take to write.
IDLE_REPLY_TIMEOUT: Final = 10.0

#: Policy names, as counted in `SinkStatistics.policy`.
POLICIES: Final = ("connections_per_client", "messages_per_connection", "message_rate")

_TEMPORARY: Final[Mapping[str, tuple[int, str, str]]] = {
    "mail": (451, "4.3.0", "Injected temporary failure (MAIL)"),
    "rcpt": (450, "4.2.1", "Injected temporary failure (RCPT)"),
    "data": (451, "4.3.0", "Injected temporary failure (DATA)"),
    "end_of_data": (451, "4.3.0", "Injected temporary failure (end of data)"),
}
_PERMANENT: Final[Mapping[str, tuple[int, str, str]]] = {
    "mail": (550, "5.7.1", "Injected permanent failure (MAIL)"),
    "rcpt": (550, "5.1.1", "Injected permanent failure (RCPT)"),
    "data": (554, "5.3.0", "Injected permanent failure (DATA)"),
    "end_of_data": (554, "5.6.0", "Injected permanent failure (end of data)"),
}


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """One accepted message, as the sink recorded it.

    `command_reads` is the number of reads that brought MAIL through DATA: 1 when
    the client pipelined the group in one write (RFC 2920), more without.
    """

    arrival: float  # time.time() when the end of data was answered with 250
    sender: str
    recipients: tuple[str, ...]
    size: int  # content bytes, un-stuffed
    message_id: str | None  # the Message-ID header field
    bench_id: str | None  # the X-Bench-Id header field
    queue_id: str  # what the 250 reply called it
    client: str  # the client's IP address
    connection: int  # the sink's connection serial (1, 2, ...)
    tls: bool
    command_reads: int
    content: bytes | None = field(default=None, repr=False)  # with record_content

    @property
    def key(self) -> str | None:
        """The id used for loss and duplicate accounting: X-Bench-Id, else Message-ID."""
        return self.bench_id if self.bench_id is not None else self.message_id

    def to_json(self) -> dict[str, Any]:
        """The record without content, for JSON output."""
        return {
            "arrival": self.arrival,
            "sender": self.sender,
            "recipients": list(self.recipients),
            "size": self.size,
            "message_id": self.message_id,
            "bench_id": self.bench_id,
            "queue_id": self.queue_id,
            "client": self.client,
            "connection": self.connection,
            "tls": self.tls,
            "command_reads": self.command_reads,
        }


@dataclass(frozen=True, slots=True)
class SinkStatistics:
    """The sink's counters at one moment (see `Sink.statistics`)."""

    messages: int  # accepted (250 to the end of data)
    recipients: int  # of accepted messages
    bytes: int  # content of accepted messages
    connections: int  # served (refused ones not included)
    connections_now: int
    connections_max: int
    tls_connections: int  # encrypted (implicit TLS, or once STARTTLS succeeded)
    refused_connections: int  # 421 before the greeting (policy or the sink's own cap)
    rejected: int  # MAIL/RCPT/DATA/end-of-data answered 4xx/5xx by policy or fault
    data_errors: int  # messages the protocol refused (size, line length, bare CR/LF)
    groups_in_one_read: int  # accepted messages whose MAIL..DATA came in one read
    reads: int  # reads from every connection
    duplicates: int  # accepted messages whose id was seen before (when recording)
    policy: Mapping[str, int]  # times each receiver policy fired
    faults: Mapping[str, int]  # injected faults by kind, e.g. "rcpt_4xx", "disconnect"
    elapsed: float  # seconds since the sink started

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "messages": self.messages,
            "recipients": self.recipients,
            "bytes": self.bytes,
            "connections": self.connections,
            "connections_now": self.connections_now,
            "connections_max": self.connections_max,
            "tls_connections": self.tls_connections,
            "refused_connections": self.refused_connections,
            "rejected": self.rejected,
            "data_errors": self.data_errors,
            "groups_in_one_read": self.groups_in_one_read,
            "reads": self.reads,
            "duplicates": self.duplicates,
            "policy": dict(self.policy),
            "faults": dict(self.faults),
            "elapsed": self.elapsed,
        }


class Sink:
    """A running sink (made by `open_sink`).

    `address`/`port` say where it listens; `statistics()` gives the counters;
    `records` the accepted messages (with `SinkConfig.record`); `wait_for` waits
    for a number of them; `stop()` stops accepting and ends the connections.
    `certificate` is the certificate file in use when TLS is on (a self-signed
    certificate is its own CA: pass it as `cafile` to trust it).
    """

    def __init__(self, config: SinkConfig, *, worker: int = 0) -> None:
        self.config = config
        self.worker = worker
        self.records: list[ReceivedMessage] = []
        self.certificate: Path | None = None
        self._server: Server | None = None
        self._tls: TlsCertificateStore | None = None
        self._protocol = ServerConfig(
            hostname=config.hostname,
            pipelining=config.pipelining,
            max_message_size=config.max_message_size,
            starttls=config.starttls,
            auth_mechanisms=("PLAIN", "LOGIN") if config.auth_users else (),
            require_tls_for_auth=config.auth_requires_tls,
            require_auth_for_mail=bool(config.auth_users),
        )
        seed = config.faults.seed
        self._rng = random.Random(None if seed is None else seed + worker)
        policy = config.policy
        self._rates = (
            TokenBuckets(policy.max_message_rate, policy.burst) if policy.max_message_rate else None
        )
        self._watchdog = IdleWatchdog(config.idle_timeout)
        self._serials = itertools.count(1)
        self._queue_ids = itertools.count(1)
        self._seen: set[str] = set()
        self._changed: trio.Event | None = None  # set on the next message, for wait_for
        self._started_at = 0.0
        self._messages = 0
        self._recipients = 0
        self._bytes = 0
        self._connections = 0
        self._active = 0
        self._max_active = 0
        self._tls_connections = 0
        self._refused = 0
        self._rejected = 0
        self._data_errors = 0
        self._one_read = 0
        self._reads = 0
        self._duplicates = 0
        self._policy: Counter[str] = Counter({name: 0 for name in POLICIES})
        self._faults: Counter[str] = Counter()

    # --- public ----------------------------------------------------------------------

    @property
    def address(self) -> SocketAddress:
        """Where the sink listens (the first address when several)."""
        if self._server is None:
            raise RuntimeError("the sink is not started")
        return self._server.addresses[0]

    @property
    def port(self) -> int:
        """The listening port (the one picked when the config said 0)."""
        return self.address.port

    def statistics(self) -> SinkStatistics:
        """The counters now."""
        return SinkStatistics(
            messages=self._messages,
            recipients=self._recipients,
            bytes=self._bytes,
            connections=self._connections,
            connections_now=self._active,
            connections_max=self._max_active,
            tls_connections=self._tls_connections,
            refused_connections=self._refused,
            rejected=self._rejected,
            data_errors=self._data_errors,
            groups_in_one_read=self._one_read,
            reads=self._reads,
            duplicates=self._duplicates,
            policy=dict(self._policy),
            faults=dict(self._faults),
            elapsed=trio.current_time() - self._started_at if self._started_at else 0.0,
        )

    async def wait_for(self, count: int, timeout: float = 30.0) -> None:
        """Wait until `count` messages in all were accepted; TimeoutError after `timeout` s."""
        with trio.move_on_after(timeout):
            while self._messages < count:
                if self._changed is None:
                    self._changed = trio.Event()
                await self._changed.wait()
            return
        raise TimeoutError(
            f"the sink accepted {self._messages} of {count} messages within {timeout:g}s"
        )

    def stop(self, grace: float = 0.0) -> None:
        """Stop accepting now; connections still open `grace` seconds later are cut."""
        if self._server is not None:
            self._server.stop(grace=grace)

    # --- running ---------------------------------------------------------------------

    async def run(
        self, tls_dir: Path, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen and serve until `stop()`; `tls_dir` holds a generated certificate."""
        cfg = self.config
        if cfg.tls:
            self._tls = certificate_store(
                cfg.cert_file, cfg.key_file, data_dir=tls_dir, hostname=cfg.hostname
            )
            self.certificate = self._tls.cert_file
        listeners = await open_listeners(
            [(cfg.host, cfg.port)], backlog=cfg.backlog, reuse_port=cfg.reuse_port
        )
        per_client = cfg.policy.max_connections_per_client or cfg.max_connections
        self._server = Server(
            listeners,
            self._serve,
            over_limit=self._refuse,
            limits=ConnectionLimits(
                max_connections=cfg.max_connections,
                max_connections_per_address=per_client,
                max_refusing=cfg.max_connections,
            ),
            tls=self._tls if cfg.implicit_tls else None,
            name=f"sink-{self.worker}",
        )
        self._started_at = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watchdog.run)
            await self._server.serve(task_status=task_status)
            nursery.cancel_scope.cancel()

    async def _refuse(self, stream: trio.abc.Stream, peer: SocketAddress, _: SocketAddress) -> None:
        assert self._server is not None
        self._refused += 1
        limit = self.config.policy.max_connections_per_client
        if limit and self._server.connections_from(peer.host) >= limit:
            self._policy["connections_per_client"] += 1
            text = f"{self.config.hostname} Too many concurrent connections from {peer.host}"
        else:
            text = f"{self.config.hostname} Too many connections, try again later"
        await stream.send_all(f"421 4.7.0 {text}\r\n".encode())

    async def _serve(self, stream: trio.abc.Stream, peer: SocketAddress, _: SocketAddress) -> None:
        self._connections += 1
        self._active += 1
        self._max_active = max(self._max_active, self._active)
        session = _Session(self, stream, peer.host, next(self._serials))
        if self.config.faults.tarpit:
            self._faults["tarpit"] += 1
        if session.tls:
            self._tls_connections += 1
        try:
            await session.run()
        finally:
            self._active -= 1
            self._reads += session.watched.reads

    # --- bookkeeping used by sessions --------------------------------------------------

    def _fault(self, stage: str, fault: CommandFault) -> tuple[int, str, str] | None:
        """Draw the injected reply for one command, if any."""
        if not (fault.temporary or fault.permanent):
            return None
        draw = self._rng.random()
        if draw < fault.temporary:
            self._faults[f"{stage}_4xx"] += 1
            return _TEMPORARY[stage]
        if draw < fault.temporary + fault.permanent:
            self._faults[f"{stage}_5xx"] += 1
            return _PERMANENT[stage]
        return None

    def _accepted(self, event: DataComplete, session: _Session, command_reads: int) -> str:
        """Count an accepted message (and record it); returns its queue id."""
        queue_id = f"{self.worker:x}{next(self._queue_ids):09X}"
        content = event.content
        self._messages += 1
        self._recipients += len(event.recipients)
        self._bytes += len(content)
        if command_reads == 1:
            self._one_read += 1
        if self.config.record:
            message_id, bench_id = header_ids(content)
            record = ReceivedMessage(
                arrival=time.time(),
                sender=event.mail.sender,
                recipients=event.recipients,
                size=len(content),
                message_id=message_id,
                bench_id=bench_id,
                queue_id=queue_id,
                client=session.client,
                connection=session.serial,
                tls=session.tls,
                command_reads=command_reads,
                content=content if self.config.record_content else None,
            )
            self.records.append(record)
            key = record.key
            if key is not None:
                if key in self._seen:
                    self._duplicates += 1
                else:
                    self._seen.add(key)
        if self._changed is not None:
            self._changed.set()
            self._changed = None
        return queue_id


class _Session:
    """One connection: the read/answer loop around a ServerConnection."""

    def __init__(self, sink: Sink, stream: trio.abc.Stream, client: str, serial: int) -> None:
        self.sink = sink
        self.stream = stream  # the connection, for TLS
        self.io = fast_io(stream)  # what reads and writes go through
        self.client = client
        self.serial = serial
        self.tls = sink.config.implicit_tls
        self.watched = Watched(trio.CancelScope())  # replaced by run()
        self.messages = 0
        self.conn = ServerConnection(sink._protocol, tls_active=self.tls)

    async def run(self) -> None:
        """Converse; a client silent for `idle_timeout` gets 421 4.4.2 and is closed."""
        watchdog = self.sink._watchdog
        with trio.CancelScope() as idle:
            self.watched = watchdog.watch(idle)
            try:
                await self.converse()
            finally:
                watchdog.forget(self.watched)
        if idle.cancelled_caught:
            self.conn.shutdown(f"{self.sink.config.hostname} Idle timeout", enhanced="4.4.2")
            with trio.move_on_after(IDLE_REPLY_TIMEOUT):
                await self.write(self.conn.data_to_send())

    async def converse(self) -> None:
        sink, conn, cfg = self.sink, self.conn, self.sink.config
        faults, policy = cfg.faults, cfg.policy
        mail_read = group_reads = 0
        conn.send_greeting()
        while True:
            try:
                event = conn.next_event()
            except RemoteProtocolError:  # e.g. commands pipelined after STARTTLS
                await self.write(conn.data_to_send())
                return
            if event is NEED_DATA:
                await self.write(conn.data_to_send())
                watched = self.watched
                watched.waiting = True
                data = await self.io.receive_some(RECEIVE_SIZE)
                watched.waiting = False
                watched.reads += 1
                conn.receive_data(data if type(data) is bytes else bytes(data))
                continue
            kind = type(event)
            if kind is MailFrom:
                if policy.max_messages_per_connection and (
                    self.messages >= policy.max_messages_per_connection
                ):
                    sink._policy["messages_per_connection"] += 1
                    sink._rejected += 1
                    conn.send_reply(421, "4.7.0", f"{cfg.hostname} Too many messages, reconnect")
                    continue
                rates = sink._rates
                if rates is not None and not rates.take(self.client, trio.current_time()):
                    sink._policy["message_rate"] += 1
                    sink._rejected += 1
                    conn.send_reply(450, "4.7.1", "Message rate limit exceeded, try again later")
                    continue
                mail_read = self.watched.reads
                await self.answer("mail", faults.mail)
            elif kind is RcptTo:
                assert isinstance(event, RcptTo)
                scripted = (
                    faults.recipients.get(event.recipient.lower()) if faults.recipients else None
                )
                if scripted is not None:
                    sink._faults["scripted_rcpt"] += 1
                    if scripted[0] >= 400:
                        sink._rejected += 1
                    conn.send_reply(*scripted)
                    continue
                await self.answer("rcpt", faults.rcpt)
            elif kind is DataCommand:
                group_reads = self.watched.reads - mail_read + 1
                await self.answer("data", faults.data)
            elif kind is DataComplete:
                assert isinstance(event, DataComplete)
                if await self.answer("end_of_data", faults.end_of_data, accept=False):
                    continue
                queue_id = sink._accepted(event, self, group_reads)
                conn.accept(f"Ok: queued as {queue_id}")
                self.messages += 1
                if faults.disconnect_after and self.messages >= faults.disconnect_after:
                    sink._faults["disconnect"] += 1
                    conn.shutdown(f"{cfg.hostname} Closing after {self.messages} messages")
            elif kind is Hello:
                conn.accept()
            elif kind is ConnectionClosed:
                await self.write(conn.data_to_send())
                return
            elif kind is DataFailed:
                assert isinstance(event, DataFailed)
                sink._data_errors += 1
                conn.send_reply(event.code, event.enhanced, event.text)
            elif kind is StartTLS:
                await self.start_tls()
            elif kind is AuthRequest:
                assert isinstance(event, AuthRequest)
                if cfg.auth_users.get(event.username) == event.password:
                    conn.accept()
                else:
                    conn.send_reply(535, "5.7.8", "Authentication credentials invalid")

    async def answer(self, stage: str, fault: CommandFault, *, accept: bool = True) -> bool:
        """Apply the stage's fault; accept unless told not to.  True if it rejected."""
        if not fault.active:
            if accept:
                self.conn.accept()
            return False
        if fault.delay:
            self.sink._faults[f"{stage}_delay"] += 1
            await self.write(self.conn.data_to_send())  # earlier replies are not delayed
            await trio.sleep(fault.delay)
        reply = self.sink._fault(stage, fault)
        if reply is not None:
            self.sink._rejected += 1
            self.conn.send_reply(*reply)
            return True
        if accept:
            self.conn.accept()
        return False

    async def start_tls(self) -> None:
        tls = self.sink._tls
        assert tls is not None
        self.conn.accept()
        await self.write(self.conn.data_to_send())
        self.stream = self.io = await start_tls(self.stream, tls.context, server_side=True)
        self.conn.tls_established()
        self.tls = True
        self.sink._tls_connections += 1

    async def write(self, data: bytes) -> None:
        if not data:
            return
        tarpit = self.sink.config.faults.tarpit
        if not tarpit:
            await self.io.send_all(data)
            return
        for i in range(len(data)):
            await self.io.send_all(data[i : i + 1])
            await trio.sleep(tarpit)


@asynccontextmanager
async def open_sink(config: SinkConfig | None = None, *, worker: int = 0) -> AsyncIterator[Sink]:
    """Run a sink in the background for the body of the ``async with``.

    ::

        async with open_sink(SinkConfig(port=0, starttls=True)) as sink:
            ... deliver to 127.0.0.1:sink.port ...
            await sink.wait_for(10)
            assert sink.statistics().messages == 10

    On exit the sink stops at once (open connections are cut).  `worker` numbers
    the sinks of one multi-process run (it seeds the fault RNG and prefixes queue ids).
    """
    sink = Sink(config if config is not None else SinkConfig(), worker=worker)
    with tempfile.TemporaryDirectory(prefix="relay-sink-") as tls_dir:
        async with trio.open_nursery() as nursery:
            await nursery.start(sink.run, Path(tls_dir))
            try:
                yield sink
            finally:
                sink.stop()
