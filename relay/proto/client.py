"""The sending side of SMTP as a sans-IO state machine: `ClientConnection`.

Theory of operation
-------------------
The caller issues commands with the ``send_*`` methods; each one queues its line
together with an *expectation* (what its reply means), and `data_to_send()`
returns the bytes to write.  Replies come in through `receive_data`, are parsed
by a fastparse `ReplyReader`, and are matched to the expectations strictly in
order; `next_event` turns them into events.

Pipelining (RFC 2920): when the server announced PIPELINING, a transaction's
MAIL FROM, every RCPT TO and DATA leave in one write.  Some commands are
*barriers*: nothing may follow them before their reply (EHLO, HELO, STARTTLS,
AUTH, DATA, NOOP, QUIT, and the end of data; RFC 2920 3.1).  The only waits in a
transaction are thus the reply to DATA (354) and the reply to the end of data.
Without PIPELINING the queued commands are released one at a time, each after
the previous reply; a rejected MAIL withdraws the RCPTs and DATA not yet sent,
and if no recipient was accepted DATA is withdrawn and RSET sent instead.

A transaction ends with TransactionComplete, whose result gives each recipient
its deciding reply.  Cleanup never costs a round trip: when MAIL was accepted but
the transaction did not reach the end of data, the client queues an RSET whose
reply it consumes silently, and the next transaction's commands pipeline behind
it.  If DATA was pipelined and no recipient was accepted, a correct server
answers DATA with 554 (RFC 2920 3.1); if it answers 354 anyway, the client sends
an empty message (a lone ``.``), which the server can deliver to nobody, and
reports the transaction as not delivered.

A 421 reply, at any point or unsolicited, yields ServiceClosing (with the
transaction in progress, its missing replies set to that 421) and closes.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from relay.errors import LocalProtocolError, RemoteProtocolError, ReplyParseError
from relay.fastparse import DotStuffer, ReplyReader, dot_stuff
from relay.proto import sasl
from relay.proto.events import (
    NEED_DATA,
    AuthReply,
    ClientEvent,
    CloseReason,
    CommandReply,
    ConnectionClosed,
    Greeting,
    HelloReply,
    NeedData,
    ReadyForData,
    RecipientReply,
    ServiceClosing,
    StartTLSReply,
    TransactionComplete,
    TransactionResult,
)
from relay.proto.paths import AddressError, parse_mailbox, xtext_encode
from relay.proto.replies import Extensions, Reply

__all__ = ["ClientConnection"]

#: The reply-line limit: generous, as EHLO replies and error texts can be long.
REPLY_LINE_LIMIT = 4096


class _Kind(enum.Enum):
    GREETING = "greeting"
    EHLO = "ehlo"
    HELO = "helo"
    STARTTLS = "starttls"
    AUTH = "auth"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"
    END_OF_DATA = "end of data"
    RSET = "rset"
    CLEANUP_RSET = "cleanup rset"
    NOOP = "noop"
    QUIT = "quit"


_BARRIERS = frozenset(
    {
        _Kind.GREETING,
        _Kind.EHLO,
        _Kind.HELO,
        _Kind.STARTTLS,
        _Kind.AUTH,
        _Kind.DATA,
        _Kind.END_OF_DATA,
        _Kind.NOOP,
        _Kind.QUIT,
    }
)


@dataclass(slots=True)
class _Command:
    line: bytes
    kind: _Kind
    index: int = 0  # the recipient's index for RCPT


class _TxState(enum.Enum):
    COMMANDS = "commands"  # MAIL/RCPT/DATA replies outstanding
    READY = "ready"  # 354 received: the caller sends the content
    STREAMING = "streaming"  # the caller is sending the content in chunks
    FINISHING = "finishing"  # content sent: waiting for the end-of-data reply


@dataclass(slots=True)
class _Transaction:
    sender: str
    recipients: tuple[str, ...]
    mail: Reply | None = None
    rcpt: list[Reply | None] = field(default_factory=list)
    data: Reply | None = None
    final: Reply | None = None
    state: _TxState = _TxState.COMMANDS
    dummy_body: bool = False  # 354 with no accepted recipient: a lone "." was sent

    def accepted(self) -> int:
        return sum(1 for r in self.rcpt if r is not None and r.code < 300)

    def result(self, missing: Reply) -> TransactionResult:
        """The result, with `missing` standing in for replies that never came."""
        mail = self.mail if self.mail is not None else missing
        rcpts = tuple(
            RecipientReply(address, reply if reply is not None else missing)
            for address, reply in zip(self.recipients, self.rcpt, strict=True)
        )
        data = self.data
        final = self.final
        if missing.code == 421 and mail.code < 300:
            if data is None:
                data = missing
            elif data.code == 354 and final is None:
                final = missing
        return TransactionResult(self.sender, mail, rcpts, data, final)


class ClientConnection:
    """One SMTP client session, without I/O (see the module docstring).

    The caller's loop::

        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                write(conn.data_to_send())
                conn.receive_data(read())          # b"" at end of input
                continue
            ...  # Greeting -> send_ehlo(); HelloReply -> send_mail(...);
                 # ReadyForData -> send_data(content); TransactionComplete -> next
                 # message or send_quit(); ServiceClosing/ConnectionClosed -> close

    Always write `data_to_send()` before waiting for input.  Calling a ``send_*``
    method when the protocol does not allow it raises LocalProtocolError; a server
    that breaks the protocol makes `next_event` raise RemoteProtocolError, whose
    code/enhanced/text (4xx) describe the failure for the recipients in flight.
    """

    def __init__(
        self,
        local_hostname: str,
        *,
        tls_active: bool = False,
        reply_line_limit: int = REPLY_LINE_LIMIT,
        pipelining: bool = True,
    ) -> None:
        if not local_hostname or any(c in local_hostname for c in " \r\n"):
            raise ValueError(f"invalid local hostname {local_hostname!r}")
        self.local_hostname = local_hostname
        #: True once TLS protects the connection (implicit TLS, or after STARTTLS).
        self.tls_active = tls_active
        self._reply_line_limit = reply_line_limit
        #: False: never pipeline, even when the server announces PIPELINING.
        self.pipelining = pipelining
        self._replies = ReplyReader(reply_line_limit)
        self._out: list[bytes] = []
        self._outbox: deque[_Command] = deque()  # held until the pipeline allows them
        self._awaiting: deque[_Command] = deque()  # sent, reply not yet received
        self._barriers = 0  # barrier commands in _awaiting
        self._events: deque[ClientEvent] = deque()
        self._extensions = Extensions()
        self._greeted = False
        self._hello = False
        self._esmtp = False
        self._tls_pending = False
        self._authenticated = False
        self._auth_responses: list[str] = []
        self._tx: _Transaction | None = None
        self._stuffer = DotStuffer()
        self._eof = False
        self._closed: CloseReason | None = None
        self._failure: RemoteProtocolError | None = None
        self._awaiting.append(_Command(b"", _Kind.GREETING))
        self._barriers = 1

    # --- state the caller may read --------------------------------------------------

    @property
    def extensions(self) -> Extensions:
        """What the server announced in its last EHLO reply (empty before/after HELO)."""
        return self._extensions

    @property
    def esmtp(self) -> bool:
        """True once EHLO (not the HELO fallback) succeeded."""
        return self._esmtp

    @property
    def authenticated(self) -> bool:
        """True once AUTH got 235."""
        return self._authenticated

    @property
    def in_transaction(self) -> bool:
        """True from `send_mail` until TransactionComplete (or the end)."""
        return self._tx is not None

    @property
    def closed(self) -> bool:
        """True once the conversation is over (QUIT answered, 421, or end of input)."""
        return self._closed is not None

    # --- bytes in and out -------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Hand over received bytes; ``b""`` means the server closed its side."""
        if self._closed is not None or self._failure is not None:
            return
        if not data:
            self._eof = True
            return
        if self._eof:
            raise LocalProtocolError("receive_data() after end of input")
        if self._tls_pending:
            raise LocalProtocolError("after 220 to STARTTLS the bytes belong to the TLS layer")
        self._replies.feed(data if type(data) is bytes else bytes(data))

    def data_to_send(self) -> bytes:
        """Return and clear the bytes to write."""
        out = b"".join(self._out)
        self._out.clear()
        return out

    def next_event(self) -> ClientEvent | NeedData:
        """The next event, NEED_DATA, or ConnectionClosed (again and again)."""
        while True:
            if self._events:
                return self._events.popleft()
            if self._failure is not None:
                raise self._failure
            if self._closed is not None:
                return ConnectionClosed(self._closed)
            if self._tls_pending:
                raise LocalProtocolError("STARTTLS accepted: call tls_established() first")
            try:
                parsed = self._replies.next_reply()
            except ReplyParseError as exc:
                raise self._fail(451, "4.5.0", f"Malformed reply from server: {exc}") from exc
            if parsed is None:
                if not self._eof:
                    return NEED_DATA
                if self._awaiting:
                    raise self._fail(421, "4.4.2", "Connection closed by server without a reply")
                self._closed = "eof"
                continue
            code, enhanced, texts = parsed
            self._on_reply(Reply(code, enhanced, tuple(texts)))

    # --- commands -----------------------------------------------------------------------

    def send_ehlo(self) -> None:
        """EHLO (RFC 5321 4.1.1.1); on a 5xx reply HELO follows automatically."""
        self._check_idle(need_hello=False)
        self._queue(f"EHLO {self.local_hostname}", _Kind.EHLO)

    def send_starttls(self) -> None:
        """STARTTLS (RFC 3207); after a 220 StartTLSReply, do the handshake and call
        `tls_established()`."""
        self._check_idle()
        if self.tls_active:
            raise LocalProtocolError("TLS is already active")
        if not self._extensions.starttls:
            raise LocalProtocolError("the server did not announce STARTTLS")
        self._queue("STARTTLS", _Kind.STARTTLS)

    def tls_established(self) -> None:
        """The TLS handshake succeeded: start over before EHLO (RFC 3207 4.2)."""
        if not self._tls_pending:
            raise LocalProtocolError("tls_established() without a 220 to STARTTLS")
        self._tls_pending = False
        self.tls_active = True
        self._replies = ReplyReader(self._reply_line_limit)
        self._hello = self._esmtp = self._authenticated = False
        self._extensions = Extensions()

    def send_auth_plain(self, username: str, password: str, authzid: str = "") -> None:
        """AUTH PLAIN with an initial response (RFC 4954 4, RFC 4616)."""
        self._check_auth("PLAIN")
        try:
            message = sasl.encode_plain(username, password, authzid)
        except ValueError as exc:
            raise LocalProtocolError(str(exc)) from exc
        self._auth_responses = []
        self._queue(f"AUTH PLAIN {message}", _Kind.AUTH)

    def send_auth_login(self, username: str, password: str) -> None:
        """AUTH LOGIN: username and password each in answer to a 334 challenge."""
        self._check_auth("LOGIN")
        try:
            self._auth_responses = [sasl.b64encode(username), sasl.b64encode(password)]
        except ValueError as exc:  # not encodable as UTF-8
            raise LocalProtocolError(str(exc)) from exc
        self._queue("AUTH LOGIN", _Kind.AUTH)

    def send_mail(
        self,
        sender: str,
        recipients: Sequence[str],
        *,
        size: int | None = None,
        body: Literal["7BIT", "8BITMIME"] | None = None,
        smtputf8: bool = False,
        auth: str | None = None,
    ) -> None:
        """Start a transaction: MAIL FROM, one RCPT TO per recipient, and DATA.

        Addresses are in wire form without brackets ("" is the null sender).  SIZE
        and AUTH= are sent only when the server announced SIZE/AUTH; BODY=8BITMIME
        and SMTPUTF8 raise LocalProtocolError when it did not (as does a non-ASCII
        address without `smtputf8`).  Then wait for ReadyForData (send the content)
        or TransactionComplete (nothing to send).
        """
        self._check_idle()
        if not recipients or isinstance(recipients, str):
            raise LocalProtocolError("a transaction needs a sequence of recipients")
        if size is not None and size < 0:
            raise LocalProtocolError("SIZE must not be negative")
        ext = self._extensions
        if smtputf8 and not ext.smtputf8:
            raise LocalProtocolError("the server did not announce SMTPUTF8")
        if body == "8BITMIME" and not ext.eightbitmime:
            raise LocalProtocolError("the server did not announce 8BITMIME")
        if sender:
            self._check_address(sender, smtputf8)
        for address in recipients:
            self._check_address(address, smtputf8)
        params = ""
        if size is not None and ext.size is not None:
            params += f" SIZE={size}"
        if body is not None and ext.eightbitmime:
            params += f" BODY={body}"
        if smtputf8:
            params += " SMTPUTF8"
        if auth is not None and ext.auth_mechanisms:
            try:
                params += f" AUTH={xtext_encode(auth)}"  # "<>" encodes as itself
            except UnicodeEncodeError as exc:
                raise LocalProtocolError("AUTH= identity is not encodable as UTF-8") from exc
        tx = _Transaction(sender, tuple(recipients), rcpt=[None] * len(recipients))
        self._tx = tx
        self._queue(f"MAIL FROM:<{sender}>{params}", _Kind.MAIL, release=False)
        for i, rcpt in enumerate(recipients):
            self._queue(f"RCPT TO:<{rcpt}>", _Kind.RCPT, index=i, release=False)
        self._queue("DATA", _Kind.DATA)

    def send_data(self, content: bytes) -> None:
        """Send the whole message after ReadyForData: dot-stuffed, with the ending."""
        tx = self._tx
        if tx is None or tx.state is not _TxState.READY:
            raise LocalProtocolError("send_data() is allowed once, after ReadyForData")
        self._out.append(dot_stuff(content))
        self._finish_body(tx)

    def send_data_chunk(self, chunk: bytes) -> None:
        """Send part of the message after ReadyForData (any chunking); `end_data()`
        finishes it."""
        tx = self._tx
        if tx is None or tx.state not in (_TxState.READY, _TxState.STREAMING):
            raise LocalProtocolError("send_data_chunk() is allowed only after ReadyForData")
        tx.state = _TxState.STREAMING
        wire = self._stuffer.feed(chunk)
        if wire:
            self._out.append(wire)

    def end_data(self) -> None:
        """Finish a message sent with `send_data_chunk()` (the ``.`` terminator)."""
        tx = self._tx
        if tx is None or tx.state not in (_TxState.READY, _TxState.STREAMING):
            raise LocalProtocolError("end_data() is allowed only after ReadyForData")
        self._out.append(self._stuffer.finish())
        self._finish_body(tx)

    def send_rset(self) -> None:
        """RSET (answered by CommandReply)."""
        self._check_idle(need_hello=False)
        self._queue("RSET", _Kind.RSET)

    def send_noop(self) -> None:
        """NOOP (answered by CommandReply); useful to probe a cached connection."""
        self._check_idle(need_hello=False)
        self._queue("NOOP", _Kind.NOOP)

    def send_quit(self) -> None:
        """QUIT; after its CommandReply the connection is closed."""
        self._check_idle(need_hello=False)
        self._queue("QUIT", _Kind.QUIT)

    # --- internals ----------------------------------------------------------------------

    def _fail(self, code: int, enhanced: str, text: str) -> RemoteProtocolError:
        self._failure = RemoteProtocolError(code, enhanced, text)
        return self._failure

    def _check_idle(self, *, need_hello: bool = True) -> None:
        """A new command may start: greeting seen, no barrier or transaction open."""
        if self._failure is not None or self._closed is not None:
            raise LocalProtocolError("the connection is closed")
        if self._tls_pending:
            raise LocalProtocolError("call tls_established() first")
        if not self._greeted or self._barriers:
            raise LocalProtocolError("wait for the outstanding reply first")
        if self._tx is not None:
            raise LocalProtocolError("a transaction is in progress")
        if need_hello and not self._hello:
            raise LocalProtocolError("send EHLO first")

    def _check_auth(self, mechanism: str) -> None:
        self._check_idle()
        if self._authenticated:
            raise LocalProtocolError("already authenticated")
        if mechanism not in self._extensions.auth_mechanisms:
            raise LocalProtocolError(f"the server did not announce AUTH {mechanism}")

    @staticmethod
    def _check_address(address: str, smtputf8: bool) -> None:
        try:
            parse_mailbox(address)
        except AddressError as exc:
            raise LocalProtocolError(f"invalid address {address!r}: {exc}") from exc
        if not smtputf8 and not address.isascii():
            raise LocalProtocolError(f"non-ASCII address {address!r} needs smtputf8=True")

    def _queue(self, line: str, kind: _Kind, *, index: int = 0, release: bool = True) -> None:
        self._outbox.append(_Command(line.encode("utf-8") + b"\r\n", kind, index))
        if release:
            self._release()

    def _release(self) -> None:
        """Move queued commands to the output as far as the pipeline allows."""
        pipelining = self.pipelining and self._extensions.pipelining
        outbox = self._outbox
        while outbox:
            if self._barriers or (self._awaiting and not pipelining):
                return
            command = outbox.popleft()
            self._write(command)

    def _write(self, command: _Command) -> None:
        self._out.append(command.line)
        self._awaiting.append(command)
        if command.kind in _BARRIERS:
            self._barriers += 1

    def _finish_body(self, tx: _Transaction) -> None:
        tx.state = _TxState.FINISHING
        self._write(_Command(b"", _Kind.END_OF_DATA))

    def _close_transaction(self) -> None:
        tx = self._tx
        assert tx is not None
        self._tx = None
        # Withdraw what was never sent (without PIPELINING) and clean up on the server.
        self._outbox = deque(c for c in self._outbox if c.kind not in (_Kind.RCPT, _Kind.DATA))
        if tx.mail is not None and tx.mail.code < 300 and tx.final is None:
            self._outbox.append(_Command(b"RSET\r\n", _Kind.CLEANUP_RSET))
        assert tx.mail is not None  # a transaction ends only after the MAIL reply
        # Without PIPELINING a rejected MAIL leaves RCPTs unsent: MAIL's reply decides.
        self._events.append(TransactionComplete(tx.result(tx.mail)))

    def _on_reply(self, reply: Reply) -> None:
        if not self._awaiting:
            if reply.code == 421:
                self._service_closing(reply)
                return
            raise self._fail(451, "4.5.0", f"Unexpected reply from server: {reply}")
        command = self._awaiting.popleft()
        if command.kind in _BARRIERS:
            self._barriers -= 1
        if reply.code == 421 and command.kind is not _Kind.QUIT:
            self._service_closing(reply)
            return
        handler = _REPLY_HANDLERS[command.kind]
        handler(self, command, reply)
        self._release()

    def _service_closing(self, reply: Reply) -> None:
        tx = self._tx
        self._tx = None
        result = tx.result(reply) if tx is not None else None
        self._events.append(ServiceClosing(reply, result))
        self._closed = "shutdown"
        self._outbox.clear()
        self._awaiting.clear()
        self._barriers = 0

    # --- reply handlers -----------------------------------------------------------------

    def _on_greeting(self, command: _Command, reply: Reply) -> None:
        self._greeted = True
        self._events.append(Greeting(reply))

    def _on_ehlo(self, command: _Command, reply: Reply) -> None:
        if reply.code < 300:
            self._hello = self._esmtp = True
            self._extensions = Extensions.parse(reply.lines)
            self._events.append(HelloReply(reply, True, self._extensions))
        elif reply.code >= 500:  # RFC 5321 3.2: fall back to HELO
            self._write(_Command(f"HELO {self.local_hostname}\r\n".encode(), _Kind.HELO))
        else:
            self._hello = self._esmtp = False
            self._extensions = Extensions()
            self._events.append(HelloReply(reply, False, self._extensions))

    def _on_helo(self, command: _Command, reply: Reply) -> None:
        self._hello = reply.code < 300
        self._esmtp = False
        self._extensions = Extensions()
        self._events.append(HelloReply(reply, False, self._extensions))

    def _on_starttls(self, command: _Command, reply: Reply) -> None:
        if reply.code == 220:
            if self._replies.take_buffer():
                # Plaintext after 220 would be taken as part of the TLS session
                # (the client side of CVE-2011-0411).
                raise self._fail(451, "4.7.0", "Server sent data after 220 to STARTTLS")
            self._tls_pending = True
        self._events.append(StartTLSReply(reply))

    def _on_auth(self, command: _Command, reply: Reply) -> None:
        if reply.code == 334:
            # The next response, or "*" to cancel when we have none left (RFC 4954 4).
            response = self._auth_responses.pop(0) if self._auth_responses else "*"
            self._write(_Command(response.encode("ascii") + b"\r\n", _Kind.AUTH))
            return
        self._auth_responses = []
        self._authenticated = reply.code == 235
        self._events.append(AuthReply(reply))

    def _on_mail(self, command: _Command, reply: Reply) -> None:
        tx = self._tx
        assert tx is not None
        tx.mail = reply
        if reply.code >= 300 and not self._awaiting:
            self._close_transaction()  # nothing else of it was sent (no PIPELINING)

    def _on_rcpt(self, command: _Command, reply: Reply) -> None:
        tx = self._tx
        assert tx is not None
        tx.rcpt[command.index] = reply
        if not self._awaiting and command.index == len(tx.recipients) - 1 and not tx.accepted():
            self._close_transaction()  # DATA not sent yet (no PIPELINING): withdraw it

    def _on_data(self, command: _Command, reply: Reply) -> None:
        tx = self._tx
        assert tx is not None
        tx.data = reply
        if reply.code != 354:
            self._close_transaction()
        elif tx.mail is not None and tx.mail.code < 300 and tx.accepted():
            tx.state = _TxState.READY
            rcpts = tx.result(reply).recipients
            self._events.append(ReadyForData(tx.mail, rcpts))
        else:  # 354 though nothing can be delivered: end the data at once
            tx.dummy_body = True
            tx.state = _TxState.FINISHING
            self._out.append(b".\r\n")
            self._write(_Command(b"", _Kind.END_OF_DATA))

    def _on_end_of_data(self, command: _Command, reply: Reply) -> None:
        tx = self._tx
        assert tx is not None
        tx.final = reply
        self._close_transaction()

    def _on_cleanup_rset(self, command: _Command, reply: Reply) -> None:
        """The reply to our own RSET: nothing to report (a 421 was handled before)."""

    def _on_command(self, command: _Command, reply: Reply) -> None:
        self._events.append(CommandReply(_VERBS[command.kind], reply))
        if command.kind is _Kind.QUIT:
            self._closed = "quit"


_VERBS: dict[_Kind, Literal["RSET", "NOOP", "QUIT"]] = {
    _Kind.RSET: "RSET",
    _Kind.NOOP: "NOOP",
    _Kind.QUIT: "QUIT",
}
_REPLY_HANDLERS = {
    _Kind.GREETING: ClientConnection._on_greeting,
    _Kind.EHLO: ClientConnection._on_ehlo,
    _Kind.HELO: ClientConnection._on_helo,
    _Kind.STARTTLS: ClientConnection._on_starttls,
    _Kind.AUTH: ClientConnection._on_auth,
    _Kind.MAIL: ClientConnection._on_mail,
    _Kind.RCPT: ClientConnection._on_rcpt,
    _Kind.DATA: ClientConnection._on_data,
    _Kind.END_OF_DATA: ClientConnection._on_end_of_data,
    _Kind.RSET: ClientConnection._on_command,
    _Kind.CLEANUP_RSET: ClientConnection._on_cleanup_rset,
    _Kind.NOOP: ClientConnection._on_command,
    _Kind.QUIT: ClientConnection._on_command,
}
