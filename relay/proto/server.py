"""The receiving side of SMTP as a sans-IO state machine: `ServerConnection`.

Theory of operation
-------------------
Bytes go in through `receive_data`; `next_event` takes complete command lines
from a fastparse `LineReader` one at a time.  A command the protocol alone can
answer (NOOP, RSET, HELP, VRFY, EXPN, QUIT, and every syntax or sequence error)
is answered at once: its reply is appended to the output buffer and parsing goes
on.  A command that needs a decision by the caller (EHLO/HELO, STARTTLS, AUTH
once the credentials are complete, MAIL, RCPT, DATA, the end of the data) is
returned as an event, and parsing stops until the caller answers it with
`accept()` or `send_reply()`.  Because parsing is lazy and halts at each
decision, replies always leave in command order, and the replies to a pipelined
group pile up in the output buffer until `next_event` returns NEED_DATA: that is
when the caller writes `data_to_send()` in one go (RFC 2920 3.2: reply at once
when no more input is buffered).

Phases (``_Phase``), and what moves between them::

    GREETING --send_greeting()--> COMMAND       (code 554: REFUSED, only QUIT works)
    COMMAND  --AUTH without complete credentials--> AUTH (lines are SASL answers)
    COMMAND  --DataCommand answered 354--> DATA (bytes go to a DataReader)
    DATA     --<CRLF>.<CRLF>--> COMMAND          (bytes after it are commands again)
    COMMAND  --StartTLS answered 220--> TLS      --tls_established()--> COMMAND, reset
    any      --QUIT, 421, end of input, error limit--> CLOSED
    any      --bytes pipelined after STARTTLS--> ERROR (RemoteProtocolError)

The transaction (the accepted MAIL and RCPTs) is kept here, so DataComplete
carries the whole envelope.  The caller holds the policy: which hosts, senders,
recipients and credentials are acceptable, and when to give up on a client.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from relay.errors import (
    BareLineEndingError,
    LineTooLongError,
    LocalProtocolError,
    MessageTooLargeError,
    ParseError,
    RemoteProtocolError,
)
from relay.fastparse import DataReader, LineReader
from relay.proto import sasl
from relay.proto.events import (
    NEED_DATA,
    AuthRequest,
    CloseReason,
    ConnectionClosed,
    DataCommand,
    DataComplete,
    DataFailed,
    Hello,
    MailFrom,
    NeedData,
    RcptTo,
    ServerEvent,
    StartTLS,
)
from relay.proto.paths import AddressError, ParameterError, parse_path_and_parameters, xtext_decode
from relay.proto.replies import format_reply

__all__ = ["ServerConfig", "ServerConnection"]

#: RFC 5321 4.5.3.1.4: a command line is at most 512 octets including CRLF.
COMMAND_LINE_LIMIT: Final = 512
#: RFC 4954 4: an AUTH command line or SASL response line may be 12288 octets.
AUTH_LINE_LIMIT: Final = 12288
#: RFC 5321 4.5.3.1.6: a text line of message data is at most 1000 octets with CRLF.
TEXT_LINE_LIMIT: Final = 1000
#: RFC 5321 4.5.3.1.8 asks for at least 100 recipients per message.
RECIPIENT_LIMIT: Final = 1000

# How much longer a MAIL command line may grow with each extension's parameter.
_SIZE_ALLOWANCE = 26  # RFC 1870 3 (" SIZE=" and 20 digits)
_AUTH_ALLOWANCE = 500  # RFC 4954 5
_BODY_ALLOWANCE = 16  # RFC 1652 3 (" BODY=8BITMIME")
_SMTPUTF8_ALLOWANCE = 10  # " SMTPUTF8"

_HELP_TEXT = "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT HELP VRFY"

# Commands other MTAs know that this server does not implement (502, RFC 5321 4.2.4).
_NOT_IMPLEMENTED = frozenset(
    {b"EXPN", b"TURN", b"ETRN", b"ATRN", b"BDAT", b"SEND", b"SOML", b"SAML", b"VERB"}
)


class _Phase(enum.Enum):
    GREETING = "greeting"
    COMMAND = "command"
    REFUSED = "refused"
    AUTH = "auth"
    DATA = "data"
    TLS = "tls"
    CLOSED = "closed"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """What a server announces and enforces; one instance may serve many connections.

    The extension flags decide the EHLO reply.  `max_message_size` (0: no limit) is
    announced with SIZE and enforced on MAIL SIZE= and on the data; a connection may
    lower or raise it for its own transactions (`message_size_limit`).  The
    ``require_*`` flags are the protocol states RFC 3207 and RFC 4954 describe
    (530 5.7.0); whether to set them is the caller's policy.  After `max_errors`
    protocol errors (0: never) the server sends 421 and closes.
    """

    hostname: str = "localhost"
    pipelining: bool = True
    max_message_size: int = 0
    eightbitmime: bool = True
    smtputf8: bool = True
    enhanced_status_codes: bool = True
    starttls: bool = False  # offer STARTTLS while the connection is in cleartext
    auth_mechanisms: tuple[str, ...] = ()  # any of "PLAIN", "LOGIN"
    require_tls_for_auth: bool = True
    require_tls_for_mail: bool = False
    require_auth_for_mail: bool = False
    max_recipients: int = RECIPIENT_LIMIT
    max_errors: int = 20
    # Beyond this many RSET/NOOP/HELP/VRFY in a session each one counts as an error
    # (as Postfix's smtpd_junk_command_limit): cycling them cannot hold a session open.
    junk_command_limit: int = 100
    bare_line_ending: Literal["reject", "normalize"] = "reject"
    command_line_limit: int = COMMAND_LINE_LIMIT
    auth_line_limit: int = AUTH_LINE_LIMIT
    text_line_limit: int = TEXT_LINE_LIMIT

    def __post_init__(self) -> None:
        if not self.hostname or any(c in self.hostname for c in " \r\n"):
            raise ValueError(f"invalid hostname {self.hostname!r}")
        unknown = set(self.auth_mechanisms) - set(sasl.SUPPORTED_MECHANISMS)
        if unknown:
            raise ValueError(f"unsupported AUTH mechanisms: {sorted(unknown)}")
        if self.bare_line_ending not in ("reject", "normalize"):
            raise ValueError("bare_line_ending must be 'reject' or 'normalize'")
        if self.junk_command_limit < 0:
            raise ValueError("junk_command_limit must not be negative (0: no limit)")
        if self.max_message_size < 0 or self.max_recipients < 1 or self.max_errors < 0:
            raise ValueError("limits must not be negative (max_recipients at least 1)")
        if self.command_line_limit < COMMAND_LINE_LIMIT:
            raise ValueError(f"command_line_limit must be at least {COMMAND_LINE_LIMIT}")

    @property
    def mail_line_limit(self) -> int:
        """The longest MAIL command line accepted, with the enabled extensions' params."""
        limit = self.command_line_limit + _SIZE_ALLOWANCE
        if self.auth_mechanisms:
            limit += _AUTH_ALLOWANCE
        if self.eightbitmime:
            limit += _BODY_ALLOWANCE
        if self.smtputf8:
            limit += _SMTPUTF8_ALLOWANCE
        return limit


# Replies the server sends on its own: (code, enhanced, text).
_Canned = tuple[int, str, str]
_UNRECOGNIZED: _Canned = (500, "5.5.2", "Command unrecognized")
_LINE_TOO_LONG: _Canned = (500, "5.5.2", "Line too long")
_BARE_LINE_ENDING: _Canned = (500, "5.5.2", "Line must end with CRLF")
_NOT_UTF8: _Canned = (500, "5.5.2", "Invalid UTF-8 in command")
_NOT_IMPLEMENTED_REPLY: _Canned = (502, "5.5.1", "Command not implemented")
_NO_ARGUMENTS: _Canned = (501, "5.5.4", "Syntax error (no parameters allowed)")
_NEED_HELLO: _Canned = (503, "5.5.1", "Send EHLO/HELO first")
_NEED_EHLO: _Canned = (503, "5.5.1", "Send EHLO first")
_NEED_MAIL: _Canned = (503, "5.5.1", "Need MAIL command")
_NEED_RCPT: _Canned = (503, "5.5.1", "Need RCPT command")
_NESTED_MAIL: _Canned = (503, "5.5.1", "Nested MAIL command")
_REFUSED: _Canned = (503, "5.5.1", "Service refused; send QUIT")
_NO_VALID_RECIPIENTS: _Canned = (554, "5.5.1", "No valid recipients")  # RFC 2920 3.1
_TLS_REQUIRED: _Canned = (530, "5.7.0", "Must issue a STARTTLS command first")  # RFC 3207 4
_AUTH_REQUIRED: _Canned = (530, "5.7.0", "Authentication required")  # RFC 4954 6
_TOO_MANY_RECIPIENTS: _Canned = (452, "4.5.3", "Too many recipients")  # RFC 5321 4.5.3.1.10
_UNSUPPORTED_PARAMETER: _Canned = (555, "5.5.4", "Unsupported parameter")  # RFC 5321 4.1.1.11
_NON_ASCII_ADDRESS: _Canned = (553, "5.6.7", "Non-ASCII address requires SMTPUTF8")  # RFC 6531
_SIZE_EXCEEDED: _Canned = (552, "5.3.4", "Message size exceeds fixed maximum")  # RFC 1870 6
_AUTH_CANCELLED: _Canned = (501, "5.0.0", "Authentication cancelled")  # RFC 4954 4
_AUTH_BAD_BASE64: _Canned = (501, "5.5.2", "Invalid base64 data")  # RFC 4954 4
_AUTH_LINE_TOO_LONG: _Canned = (500, "5.5.6", "Authentication exchange line is too long")
_STARTTLS_INJECTION: _Canned = (554, "5.5.1", "Commands pipelined after STARTTLS")

# The reply suggested in DataFailed for each DataReader error.
_DATA_ERRORS: dict[type[ParseError], _Canned] = {
    MessageTooLargeError: (552, "5.3.4", "Message size exceeds fixed maximum"),
    LineTooLongError: (550, "5.5.2", "Message has a line longer than 1000 octets"),
    BareLineEndingError: (550, "5.5.2", "Message has a bare CR or LF (must be CRLF)"),
}

# Positive codes that accept each kind of event.
_POSITIVE: dict[type[ServerEvent], frozenset[int]] = {
    Hello: frozenset({250}),
    StartTLS: frozenset({220}),
    AuthRequest: frozenset({235}),
    MailFrom: frozenset({250}),
    RcptTo: frozenset({250, 251}),
    DataCommand: frozenset({354}),
    DataComplete: frozenset({250}),
    DataFailed: frozenset(),
}

# The default positive reply of each event for accept().
_ACCEPT: dict[type[ServerEvent], tuple[int, str | None, str]] = {
    StartTLS: (220, "2.0.0", "Ready to start TLS"),
    AuthRequest: (235, "2.7.0", "Authentication successful"),
    MailFrom: (250, "2.1.0", "Sender OK"),
    RcptTo: (250, "2.1.5", "Recipient OK"),
    DataCommand: (354, None, "End data with <CR><LF>.<CR><LF>"),
    DataComplete: (250, "2.0.0", "OK"),
}


class ServerConnection:
    """One SMTP server session, without I/O (see the module docstring).

    The caller's loop::

        conn.send_greeting()
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                write(conn.data_to_send())     # the replies to a whole pipelined group
                conn.receive_data(read())      # b"" at end of input
            elif isinstance(event, ConnectionClosed):
                write(conn.data_to_send()); close(); break
            else:
                decide, then conn.accept() or conn.send_reply(code, enhanced, text)

    `next_event` raises RemoteProtocolError only when the session cannot go on
    (bytes pipelined after STARTTLS): the reply is already queued; write it and
    close.  Misuse by the caller raises LocalProtocolError.

    Memory: each command line is bounded by the LineReader and message data by
    `message_size_limit`; received bytes not yet parsed are kept as given, so read
    more only when `next_event` returns NEED_DATA (as the loop above does).
    """

    def __init__(self, config: ServerConfig | None = None, *, tls_active: bool = False) -> None:
        self.config = config if config is not None else ServerConfig()
        #: True once TLS protects the connection (implicit TLS, or after STARTTLS).
        self.tls_active = tls_active
        #: The size limit for this connection's messages (0: none); defaults to the
        #: config's, may be changed by the caller (e.g. per user after AUTH).
        self.message_size_limit = self.config.max_message_size
        self._phase = _Phase.GREETING
        self._lines = LineReader(self._reader_limit())
        self._raw = b""  # received bytes not yet given to a reader
        self._raw_pos = 0
        self._out: list[bytes] = []
        self._eof = False
        self._early = False
        self._errors = 0
        self._junk = 0
        self._close_reason: CloseReason = "eof"
        self._failure: RemoteProtocolError | None = None
        self._pending: ServerEvent | None = None
        self._hello: Literal["EHLO", "HELO"] | None = None
        self._hello_name: str | None = None
        self._authenticated_as: str | None = None
        self._mail: MailFrom | None = None
        self._rcpts: list[str] = []
        self._rcpt_commands = 0
        self._auth_mechanism = ""
        self._auth_username: str | None = None
        self._data: DataReader | None = None
        self._chunks: list[bytes] = []

    # --- state the caller may read --------------------------------------------------

    @property
    def early_talker(self) -> bool:
        """True if bytes arrived before the greeting was sent (clients wait, RFC 5321 3.1)."""
        return self._early

    @property
    def error_count(self) -> int:
        """Protocol errors (5xx the server answered on its own) so far."""
        return self._errors

    @property
    def hello_name(self) -> str | None:
        """The name given with the accepted EHLO/HELO, or None."""
        return self._hello_name

    @property
    def esmtp(self) -> bool:
        """True once an EHLO (not HELO) has been accepted."""
        return self._hello == "EHLO"

    @property
    def authenticated_as(self) -> str | None:
        """The username of the accepted AUTH, or None."""
        return self._authenticated_as

    @property
    def in_transaction(self) -> bool:
        """True between an accepted MAIL and the end of that transaction."""
        return self._mail is not None

    @property
    def awaiting_reply(self) -> ServerEvent | None:
        """The event waiting for `accept()`/`send_reply()`, or None."""
        return self._pending

    @property
    def phase(self) -> str:
        """The protocol phase, for logs: greeting, command, refused, auth, data, tls,
        closed or error."""
        return self._phase.value

    # --- bytes in and out -------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Hand over received bytes; ``b""`` means the peer closed its side."""
        phase = self._phase
        if phase is _Phase.CLOSED or phase is _Phase.ERROR:
            return
        if not data:
            self._eof = True
            return
        if self._eof:
            raise LocalProtocolError("receive_data() after end of input")
        if type(data) is not bytes:
            data = bytes(data)  # e.g. a bytearray from the stream
        if phase is _Phase.TLS:
            raise LocalProtocolError("after 220 to STARTTLS the bytes belong to the TLS layer")
        if isinstance(self._pending, StartTLS):
            # RFC 3207 4: STARTTLS ends a pipelined group (CVE-2011-0411).
            raise self._fail(_STARTTLS_INJECTION)
        if phase is _Phase.GREETING:
            self._early = True
        if phase is _Phase.DATA:
            self._feed_data(data)
        elif self._raw_pos:
            self._raw = self._raw[self._raw_pos :] + data
            self._raw_pos = 0
        else:
            self._raw = self._raw + data if self._raw else data

    def data_to_send(self) -> bytes:
        """Return and clear the bytes to write (the replies queued so far)."""
        out = b"".join(self._out)
        self._out.clear()
        return out

    def next_event(self) -> ServerEvent | NeedData:
        """The next event, NEED_DATA, or ConnectionClosed (again and again)."""
        if self._pending is not None:
            raise LocalProtocolError(f"answer {self._pending!r} before asking for more")
        while True:
            phase = self._phase
            if phase is _Phase.COMMAND or phase is _Phase.REFUSED or phase is _Phase.AUTH:
                try:
                    line = self._next_line()
                except LineTooLongError:
                    if phase is _Phase.AUTH:
                        self._phase = _Phase.COMMAND
                        self._error(_AUTH_LINE_TOO_LONG)
                    else:
                        self._error(_LINE_TOO_LONG)
                    continue
                except BareLineEndingError:
                    self._phase = _Phase.COMMAND if phase is _Phase.AUTH else phase
                    self._error(_BARE_LINE_ENDING)
                    continue
                if line is None:
                    if self._eof:
                        self._close("eof")
                        continue
                    return NEED_DATA
                if phase is _Phase.AUTH:
                    event = self._auth_line(line)
                else:
                    event = self._command(line)
                if event is not None:
                    self._pending = event
                    return event
            elif phase is _Phase.DATA:
                assert self._data is not None
                if self._data.done:
                    return self._end_of_data()
                if self._eof:
                    self._close("eof")
                    continue
                return NEED_DATA
            elif phase is _Phase.CLOSED:
                return ConnectionClosed(self._close_reason)
            elif phase is _Phase.ERROR:
                assert self._failure is not None
                raise self._failure
            elif phase is _Phase.GREETING:
                raise LocalProtocolError("send_greeting() first")
            else:
                raise LocalProtocolError("STARTTLS accepted: call tls_established() first")

    # --- answers from the caller ------------------------------------------------------

    def send_greeting(self, text: str = "ESMTP ready", *, code: int = 220) -> None:
        """Send the opening reply: 220, or 554 to refuse the session (RFC 5321 3.1: it
        then answers everything but QUIT with 503), or 421 to close at once."""
        if self._phase is not _Phase.GREETING:
            raise LocalProtocolError("the greeting was already sent")
        if code not in (220, 421, 554):
            raise LocalProtocolError("the greeting must be 220, 421 or 554")
        self._out.append(format_reply(code, None, f"{self.config.hostname} {text}"))
        if code == 220:
            self._phase = _Phase.COMMAND
        elif code == 554:
            self._phase = _Phase.REFUSED
        else:
            self._close("shutdown")

    def accept(self, text: str | None = None) -> None:
        """Answer the pending event with its usual positive reply (EHLO: 250 and the
        extension list; DATA: 354; AUTH: 235 ...), optionally with other text."""
        event = self._require_pending()
        if isinstance(event, Hello):
            if text is None:  # echo the name only when it is harmless in a reply
                name = event.name
                text = f"Hello {name}" if name.isascii() and name.isprintable() else "Hello"
            self.send_reply(250, None, text)
            return
        if isinstance(event, DataFailed):
            raise LocalProtocolError("DataFailed can only be rejected")
        code, enhanced, default = _ACCEPT[type(event)]
        self.send_reply(code, enhanced, text if text is not None else default)

    def send_reply(self, code: int, enhanced: str | None, text: str) -> None:
        """Answer the pending event with any reply.

        A positive code must suit the event (250 for EHLO/HELO/MAIL and the end of
        data, 250/251 for RCPT, 354 for DATA, 235 for AUTH, 220 for STARTTLS); any
        4xx/5xx rejects it, and 421 also closes the session.
        """
        event = self._require_pending()
        positive = code < 400
        if positive and code not in _POSITIVE[type(event)]:
            raise LocalProtocolError(f"{code} cannot accept {type(event).__name__}")
        if isinstance(event, Hello) and positive:
            reply = self._hello_reply(event, text)
        else:
            reply = format_reply(code, self._enhanced(enhanced), text)
        self._out.append(reply)
        self._pending = None
        if code == 421:
            self._close("shutdown")
        elif isinstance(event, RcptTo):
            if positive:
                self._rcpts.append(event.recipient)
        elif isinstance(event, MailFrom):
            if positive:
                self._mail = event
                self._rcpts = []
                self._rcpt_commands = 0
        elif isinstance(event, DataCommand):
            if positive:
                self._start_data()
        elif isinstance(event, DataComplete | DataFailed):
            self._reset_transaction()  # the transaction is over either way
        elif isinstance(event, Hello):
            if positive:
                self._hello = event.verb
                self._hello_name = event.name
        elif isinstance(event, StartTLS):
            if positive:
                self._phase = _Phase.TLS
        elif isinstance(event, AuthRequest) and positive:
            self._authenticated_as = event.username

    def tls_established(self) -> None:
        """Tell the machine the TLS handshake after STARTTLS succeeded: the session
        starts over before EHLO, forgetting everything it knew (RFC 3207 4.2)."""
        if self._phase is not _Phase.TLS:
            raise LocalProtocolError("tls_established() without an accepted STARTTLS")
        self.tls_active = True
        self._phase = _Phase.COMMAND
        self._lines = LineReader(self._reader_limit())
        self._raw = b""
        self._raw_pos = 0
        self._hello = self._hello_name = self._authenticated_as = None
        self._reset_transaction()

    def shutdown(
        self, text: str = "Service closing transmission channel", *, enhanced: str = "4.3.2"
    ) -> None:
        """Queue an unsolicited 421 (RFC 5321 3.8: shutdown, timeout) and close.

        Use e.g. ``enhanced="4.4.2"`` for a timeout.  Any pending event is dropped.
        """
        if self._phase is _Phase.CLOSED or self._phase is _Phase.ERROR:
            return
        self._out.append(format_reply(421, self._enhanced(enhanced), text))
        self._pending = None
        self._close("shutdown")

    # --- internals ----------------------------------------------------------------------

    def _next_line(self) -> bytes | None:
        """The next command line, fed to the LineReader one line at a time.

        Received bytes wait in ``_raw`` and reach the LineReader only up to the end
        of the next line, so bytes after a DATA or STARTTLS command never sit in
        the LineReader, where a long line would be cut to its limit: they go intact
        to the DataReader, or are detected as injected after STARTTLS.
        """
        lines = self._lines
        line = lines.next_line()
        while line is None and self._raw_pos < len(self._raw):
            raw, pos = self._raw, self._raw_pos
            i = raw.find(b"\n", pos)
            end = len(raw) if i < 0 else i + 1
            lines.feed(raw[pos:end] if pos or end < len(raw) else raw)
            if end == len(raw):
                self._raw = b""
                self._raw_pos = 0
            else:
                self._raw_pos = end
            line = lines.next_line()
        return line

    def _reader_limit(self) -> int:
        cfg = self.config  # the MAIL limit is the largest but for AUTH's
        return max(cfg.mail_line_limit, cfg.auth_line_limit if cfg.auth_mechanisms else 0)

    def _require_pending(self) -> ServerEvent:
        if self._pending is None:
            raise LocalProtocolError("no command is waiting for a reply")
        return self._pending

    def _enhanced(self, enhanced: str | None) -> str | None:
        return enhanced if self.config.enhanced_status_codes else None

    def _reply(self, canned: _Canned) -> None:
        code, enhanced, text = canned
        self._out.append(format_reply(code, self._enhanced(enhanced), text))

    def _error(self, canned: _Canned) -> None:
        """Answer a protocol error; close with 421 once the error limit is reached."""
        self._reply(canned)
        self._errors += 1
        if self.config.max_errors and self._errors >= self.config.max_errors:
            self._reply((421, "4.7.0", f"{self.config.hostname} Too many errors"))
            self._close("errors")

    def _junk_command(self) -> None:
        """Count a command that moves no mail; past the limit it counts as an error."""
        self._junk += 1
        limit = self.config.junk_command_limit
        if limit and self._junk > limit:
            self._errors += 1
            if self.config.max_errors and self._errors >= self.config.max_errors:
                self._reply((421, "4.7.0", f"{self.config.hostname} Too many errors"))
                self._close("errors")

    def _fail(self, canned: _Canned) -> RemoteProtocolError:
        """Enter the ERROR state: the session cannot continue."""
        code, enhanced, text = canned
        self._reply(canned)
        self._failure = RemoteProtocolError(code, enhanced, text)
        self._phase = _Phase.ERROR
        self._pending = None
        return self._failure

    def _close(self, reason: CloseReason) -> None:
        self._phase = _Phase.CLOSED
        self._close_reason = reason
        self._data = None
        self._chunks = []

    def _reset_transaction(self) -> None:
        self._mail = None
        self._rcpts = []
        self._rcpt_commands = 0

    def _hello_reply(self, event: Hello, text: str) -> bytes:
        cfg = self.config
        first = f"{cfg.hostname} {text}" if text else cfg.hostname
        if event.verb == "HELO":
            return format_reply(250, None, first)
        lines = [first]
        if cfg.pipelining:
            lines.append("PIPELINING")
        size = self.message_size_limit
        lines.append(f"SIZE {size}" if size else "SIZE")
        if cfg.eightbitmime:
            lines.append("8BITMIME")
        if cfg.smtputf8:
            lines.append("SMTPUTF8")
        if cfg.enhanced_status_codes:
            lines.append("ENHANCEDSTATUSCODES")
        if cfg.starttls and not self.tls_active:
            lines.append("STARTTLS")
        if self._auth_offered():
            lines.append("AUTH " + " ".join(cfg.auth_mechanisms))
        return format_reply(250, None, lines)

    def _auth_offered(self) -> bool:
        cfg = self.config
        return bool(cfg.auth_mechanisms) and (self.tls_active or not cfg.require_tls_for_auth)

    # --- commands -----------------------------------------------------------------------

    def _command(self, line: bytes) -> ServerEvent | None:
        """Handle one command line: return an event, or answer it and return None."""
        verb, _, arg_bytes = line.partition(b" ")
        verb = verb.upper()
        limit = self.config.command_line_limit
        if verb == b"MAIL":
            limit = self.config.mail_line_limit
        elif verb == b"AUTH":
            limit = self.config.auth_line_limit
        if len(line) + 2 > limit:
            self._error(_LINE_TOO_LONG)
            return None
        try:
            arg = arg_bytes.decode("utf-8")
        except UnicodeDecodeError:
            self._error(_NOT_UTF8)
            return None
        if self._phase is _Phase.REFUSED and verb != b"QUIT":
            self._error(_REFUSED)
            return None
        handler = _HANDLERS.get(verb)
        if handler is not None:
            return handler(self, arg)
        if verb in _NOT_IMPLEMENTED:
            self._error(_NOT_IMPLEMENTED_REPLY)
        else:
            self._error(_UNRECOGNIZED)
        return None

    def _hello_command(self, verb: Literal["EHLO", "HELO"], arg: str) -> ServerEvent | None:
        name = arg.strip(" ")
        # RFC 5321 4.1.1.1: a domain or address literal; never control characters, which
        # would be echoed into our reply and the Received header.
        if not name or any(c <= " " or c == "\x7f" for c in name):
            self._error((501, "5.5.4", f"Syntax: {verb} hostname"))
            return None
        # RFC 5321 4.1.4: EHLO/HELO cancels any transaction and the previous hello.
        self._reset_transaction()
        self._hello = None
        self._hello_name = None
        return Hello(verb, name)

    def _ehlo(self, arg: str) -> ServerEvent | None:
        return self._hello_command("EHLO", arg)

    def _helo(self, arg: str) -> ServerEvent | None:
        return self._hello_command("HELO", arg)

    def _starttls(self, arg: str) -> ServerEvent | None:
        if arg.strip(" "):
            self._error(_NO_ARGUMENTS)  # RFC 3207 4
        elif not self.config.starttls:
            self._error(_NOT_IMPLEMENTED_REPLY)
        elif self.tls_active:
            self._error((503, "5.5.1", "TLS already active"))
        elif self._hello != "EHLO":
            self._error(_NEED_EHLO)
        elif self._raw_pos < len(self._raw) or self._lines.buffered:
            raise self._fail(_STARTTLS_INJECTION)
        else:
            return StartTLS()
        return None

    def _auth(self, arg: str) -> ServerEvent | None:
        cfg = self.config
        if not cfg.auth_mechanisms:
            self._error(_NOT_IMPLEMENTED_REPLY)
            return None
        if self._hello != "EHLO":
            self._error(_NEED_EHLO)
            return None
        if self._authenticated_as is not None:
            self._error((503, "5.5.1", "Already authenticated"))  # RFC 4954 4
            return None
        if self._mail is not None:
            self._error((503, "5.5.1", "AUTH not permitted during a mail transaction"))
            return None
        if cfg.require_tls_for_auth and not self.tls_active:
            self._error(_TLS_REQUIRED)
            return None
        parts = arg.strip(" ").split(" ")
        if not parts[0] or len(parts) > 2:
            self._error((501, "5.5.4", "Syntax: AUTH mechanism [initial-response]"))
            return None
        mechanism = parts[0].upper()
        if mechanism not in cfg.auth_mechanisms:
            self._error((504, "5.5.4", "Unrecognized authentication type"))
            return None
        self._auth_mechanism = mechanism
        self._auth_username = None
        if len(parts) == 2:
            return self._auth_response(parts[1])
        self._phase = _Phase.AUTH
        challenge = "" if mechanism == "PLAIN" else sasl.LOGIN_USERNAME_CHALLENGE
        self._out.append(format_reply(334, None, challenge))
        return None

    def _auth_line(self, line: bytes) -> ServerEvent | None:
        """A line during the AUTH exchange: a base64 response, or "*" to cancel."""
        self._phase = _Phase.COMMAND
        try:
            text = line.decode("ascii")
        except UnicodeDecodeError:
            self._error(_AUTH_BAD_BASE64)
            return None
        if text == "*":
            self._reply(_AUTH_CANCELLED)
            return None
        return self._auth_response(text)

    def _auth_response(self, text: str) -> ServerEvent | None:
        try:
            data = sasl.b64decode(text)
        except ValueError:
            self._error(_AUTH_BAD_BASE64)
            return None
        if self._auth_mechanism == "PLAIN":
            try:
                authzid, username, password = sasl.decode_plain(data)
            except ValueError:
                self._error((501, "5.5.2", "Invalid PLAIN response"))
                return None
            return AuthRequest("PLAIN", username, password, authzid)
        try:
            value = data.decode("utf-8")
        except UnicodeDecodeError:
            self._error((501, "5.5.2", "Invalid UTF-8 in LOGIN response"))
            return None
        if self._auth_username is None:
            self._auth_username = value
            self._phase = _Phase.AUTH
            self._out.append(format_reply(334, None, sasl.LOGIN_PASSWORD_CHALLENGE))
            return None
        return AuthRequest("LOGIN", self._auth_username, value)

    def _mail_command(self, arg: str) -> ServerEvent | None:
        cfg = self.config
        if self._hello is None:
            self._error(_NEED_HELLO)
            return None
        if cfg.require_tls_for_mail and not self.tls_active:
            self._error(_TLS_REQUIRED)
            return None
        if cfg.require_auth_for_mail and self._authenticated_as is None:
            self._error(_AUTH_REQUIRED)
            return None
        if self._mail is not None:
            self._error(_NESTED_MAIL)
            return None
        if arg[:5].upper() != "FROM:":
            self._error((501, "5.5.2", "Syntax: MAIL FROM:<address>"))
            return None
        try:
            sender, params = parse_path_and_parameters(arg[5:].lstrip(" "), reverse=True)
        except AddressError:
            self._error((501, "5.1.7", "Bad sender address syntax"))
            return None
        except ParameterError:
            self._error((501, "5.5.4", "Invalid MAIL parameters"))
            return None
        if params and self._hello != "EHLO":
            self._error(_UNSUPPORTED_PARAMETER)  # parameters need EHLO (RFC 5321 4.1.1.11)
            return None
        size: int | None = None
        body: Literal["7BIT", "8BITMIME"] | None = None
        smtputf8 = False
        auth: str | None = None
        for key, value in params.items():
            if key == "SIZE":
                if value is None or not value.isascii() or not value.isdigit() or len(value) > 20:
                    self._error((501, "5.5.4", "Invalid SIZE parameter"))
                    return None
                size = int(value)
                limit = self.message_size_limit
                if limit and size > limit:
                    self._reply(_SIZE_EXCEEDED)
                    return None
            elif key == "BODY" and cfg.eightbitmime:
                upper = (value or "").upper()
                if upper == "7BIT":
                    body = "7BIT"
                elif upper == "8BITMIME":
                    body = "8BITMIME"
                else:
                    self._error((501, "5.5.4", "Invalid BODY parameter"))
                    return None
            elif key == "SMTPUTF8" and cfg.smtputf8:
                if value is not None:
                    self._error((501, "5.5.4", "SMTPUTF8 takes no value"))
                    return None
                smtputf8 = True
            elif key == "AUTH" and self._auth_offered():
                try:
                    auth = xtext_decode(value or "")
                except ParameterError:
                    self._error((501, "5.5.4", "Invalid AUTH parameter"))
                    return None
            else:
                self._error(_UNSUPPORTED_PARAMETER)
                return None
        if not smtputf8 and not sender.isascii():  # (every accepted value is ASCII)
            self._reply(_NON_ASCII_ADDRESS)
            return None
        return MailFrom(sender, size, body, smtputf8, auth)

    def _rcpt_command(self, arg: str) -> ServerEvent | None:
        mail = self._mail
        if mail is None:
            self._error(_NEED_MAIL)
            return None
        self._rcpt_commands += 1
        if arg[:3].upper() != "TO:":
            self._error((501, "5.5.2", "Syntax: RCPT TO:<address>"))
            return None
        try:
            recipient, params = parse_path_and_parameters(arg[3:].lstrip(" "))
        except (AddressError, ParameterError):
            self._error((501, "5.1.3", "Bad recipient address syntax"))
            return None
        if params:
            self._error(_UNSUPPORTED_PARAMETER)
            return None
        if not mail.smtputf8 and not recipient.isascii():
            self._reply(_NON_ASCII_ADDRESS)
            return None
        if len(self._rcpts) >= self.config.max_recipients:
            self._reply(_TOO_MANY_RECIPIENTS)
            return None
        return RcptTo(recipient)

    def _data_command(self, arg: str) -> ServerEvent | None:
        if arg.strip(" "):
            self._error(_NO_ARGUMENTS)
        elif self._mail is None:
            self._error(_NEED_MAIL)
        elif not self._rcpts:
            self._error(_NEED_RCPT if self._rcpt_commands == 0 else _NO_VALID_RECIPIENTS)
        else:
            return DataCommand()
        return None

    def _rset(self, arg: str) -> ServerEvent | None:
        if arg.strip(" "):
            self._error(_NO_ARGUMENTS)
        else:
            self._reset_transaction()
            self._reply((250, "2.0.0", "OK"))
            self._junk_command()
        return None

    def _noop(self, arg: str) -> ServerEvent | None:
        self._reply((250, "2.0.0", "OK"))
        self._junk_command()
        return None

    def _help(self, arg: str) -> ServerEvent | None:
        self._reply((214, "2.0.0", _HELP_TEXT))
        self._junk_command()
        return None

    def _vrfy(self, arg: str) -> ServerEvent | None:
        if not arg.strip(" "):
            self._error((501, "5.5.4", "Syntax: VRFY address"))
        else:  # RFC 5321 3.5.3: 252, neither confirming nor denying
            self._reply((252, "2.5.0", "Cannot VRFY user, but will accept message"))
            self._junk_command()
        return None

    def _quit(self, arg: str) -> ServerEvent | None:
        if arg.strip(" "):
            self._error(_NO_ARGUMENTS)
            return None
        self._reply((221, "2.0.0", f"{self.config.hostname} closing connection"))
        self._close("quit")
        return None

    # --- data -----------------------------------------------------------------------------

    def _start_data(self) -> None:
        cfg = self.config
        self._data = DataReader(self.message_size_limit, cfg.text_line_limit, cfg.bare_line_ending)
        self._chunks = []
        self._phase = _Phase.DATA
        pipelined = self._lines.take_buffer() + self._raw[self._raw_pos :]
        self._raw = b""
        self._raw_pos = 0
        if pipelined:
            self._feed_data(pipelined)

    def _feed_data(self, data: bytes) -> None:
        assert self._data is not None
        content = self._data.feed(data)
        if content:
            self._chunks.append(content)

    def _end_of_data(self) -> ServerEvent:
        reader = self._data
        mail = self._mail
        assert reader is not None and mail is not None
        self._data = None
        self._phase = _Phase.COMMAND
        self._raw = reader.trailing  # pipelined commands after the data (empty before)
        self._raw_pos = 0
        recipients = tuple(self._rcpts)
        event: ServerEvent
        if reader.error is None:
            event = DataComplete(mail, recipients, b"".join(self._chunks))
        else:
            code, enhanced, text = _DATA_ERRORS.get(
                type(reader.error), (550, "5.6.0", "Invalid message data")
            )
            event = DataFailed(mail, recipients, reader.error, code, enhanced, text)
        self._chunks = []
        self._pending = event
        return event


_HANDLERS: dict[bytes, Callable[[ServerConnection, str], ServerEvent | None]] = {
    b"EHLO": ServerConnection._ehlo,
    b"HELO": ServerConnection._helo,
    b"STARTTLS": ServerConnection._starttls,
    b"AUTH": ServerConnection._auth,
    b"MAIL": ServerConnection._mail_command,
    b"RCPT": ServerConnection._rcpt_command,
    b"DATA": ServerConnection._data_command,
    b"RSET": ServerConnection._rset,
    b"NOOP": ServerConnection._noop,
    b"HELP": ServerConnection._help,
    b"VRFY": ServerConnection._vrfy,
    b"QUIT": ServerConnection._quit,
}
