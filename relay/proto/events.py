"""Events: what `ServerConnection.next_event` and `ClientConnection.next_event` return.

Every event is a frozen dataclass.  Server events marked "needs a reply" leave the
server waiting until its caller answers with `ServerConnection.accept` or
`ServerConnection.send_reply`; the others are information.  `NEED_DATA` means
"every buffered byte is processed: flush `data_to_send()`, then receive more".
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import ClassVar, Final, Literal

from relay.errors import ParseError
from relay.proto.replies import Extensions, Reply

__all__ = [
    "NEED_DATA",
    "AuthReply",
    "AuthRequest",
    "ClientEvent",
    "CloseReason",
    "CommandReply",
    "ConnectionClosed",
    "DataCommand",
    "DataComplete",
    "DataFailed",
    "Greeting",
    "Hello",
    "HelloReply",
    "MailFrom",
    "NeedData",
    "RcptTo",
    "ReadyForData",
    "RecipientReply",
    "ServerEvent",
    "ServiceClosing",
    "StartTLS",
    "StartTLSReply",
    "TransactionComplete",
    "TransactionResult",
]


class NeedData(enum.Enum):
    """The type of the `NEED_DATA` sentinel."""

    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData.NEED_DATA

#: Why a connection is over: the peer sent QUIT / got 221, the peer closed its
#: side, a 421 was sent or received, or the server's error limit was reached.
CloseReason = Literal["quit", "eof", "shutdown", "errors"]


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The conversation is over (returned again on every later call)."""

    needs_reply: ClassVar[bool] = False
    reason: CloseReason


# --- server events -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """EHLO or HELO (needs a reply: `accept()` sends 250 with the extension list)."""

    needs_reply: ClassVar[bool] = True
    verb: Literal["EHLO", "HELO"]
    name: str  # the client's claimed host name or address literal, as sent


@dataclass(frozen=True, slots=True)
class StartTLS:
    """STARTTLS (needs a reply: `accept()` sends 220; then do the handshake and
    call `tls_established()`)."""

    needs_reply: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """Complete AUTH credentials (needs a reply: 235 accepts, e.g. 535 5.7.8 rejects)."""

    needs_reply: ClassVar[bool] = True
    mechanism: str  # "PLAIN" or "LOGIN"
    username: str
    password: str = field(repr=False)
    authzid: str = ""  # PLAIN's authorization identity ("" when absent)


@dataclass(frozen=True, slots=True)
class MailFrom:
    """MAIL FROM with its parameters checked (needs a reply)."""

    needs_reply: ClassVar[bool] = True
    sender: str  # "" for the null reverse-path <>
    size: int | None = None  # SIZE= (RFC 1870)
    body: Literal["7BIT", "8BITMIME"] | None = None  # BODY= (RFC 6152)
    smtputf8: bool = False  # SMTPUTF8 (RFC 6531)
    auth: str | None = None  # AUTH= decoded from xtext (RFC 4954 5); "<>" if unknown


@dataclass(frozen=True, slots=True)
class RcptTo:
    """RCPT TO (needs a reply: 250 accepts; the recipient then counts for DATA)."""

    needs_reply: ClassVar[bool] = True
    recipient: str


@dataclass(frozen=True, slots=True)
class DataCommand:
    """DATA with at least one accepted recipient (needs a reply: `accept()` sends 354)."""

    needs_reply: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class DataComplete:
    """A whole message arrived (needs a reply: 250 once it is stored durably)."""

    needs_reply: ClassVar[bool] = True
    mail: MailFrom
    recipients: tuple[str, ...]
    content: bytes = field(repr=False)  # un-stuffed, CRLF line endings


@dataclass(frozen=True, slots=True)
class DataFailed:
    """The message data broke a limit or the line-ending policy (needs a reply).

    `code`, `enhanced` and `text` are the reply to send (e.g. 552 5.3.4); the data
    was read to its real end, so the session continues after the reply.
    """

    needs_reply: ClassVar[bool] = True
    mail: MailFrom
    recipients: tuple[str, ...]
    error: ParseError
    code: int
    enhanced: str
    text: str


ServerEvent = (
    Hello
    | StartTLS
    | AuthRequest
    | MailFrom
    | RcptTo
    | DataCommand
    | DataComplete
    | DataFailed
    | ConnectionClosed
)


# --- client events -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecipientReply:
    """One recipient and the reply that concerns it."""

    address: str
    reply: Reply


@dataclass(frozen=True, slots=True)
class TransactionResult:
    """Everything the server said about one transaction.

    `data` is the reply to DATA (None if DATA was never sent) and `final` the reply
    to the end of data (None if no content was sent).  `outcome()` names, for each
    recipient, the reply that decides its fate.
    """

    sender: str
    mail: Reply
    recipients: tuple[RecipientReply, ...]
    data: Reply | None = None
    final: Reply | None = None

    @property
    def accepted(self) -> tuple[str, ...]:
        """Recipients whose RCPT got a 2xx reply."""
        return tuple(r.address for r in self.recipients if r.reply.code < 300)

    @property
    def delivered(self) -> bool:
        """True if the server took responsibility for the accepted recipients."""
        return (
            self.mail.code < 300
            and self.final is not None
            and self.final.code < 300
            and bool(self.accepted)
        )

    def outcome(self) -> tuple[RecipientReply, ...]:
        """Per recipient, the deciding reply: MAIL's if it failed, else RCPT's if it
        failed, else DATA's if it failed, else the end-of-data reply."""
        out = []
        for rcpt in self.recipients:
            reply = rcpt.reply
            if self.mail.code >= 300:
                reply = self.mail
            elif reply.code < 300:
                if self.data is not None and self.data.code != 354:
                    reply = self.data
                elif self.final is not None:
                    reply = self.final
            out.append(RecipientReply(rcpt.address, reply))
        return tuple(out)


@dataclass(frozen=True, slots=True)
class Greeting:
    """The server's opening reply (220, or 554 to refuse: then send QUIT)."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class HelloReply:
    """The reply to EHLO, or to HELO after EHLO failed with 5xx.

    `extensions` is what the server announced (empty after HELO or on failure).
    """

    reply: Reply
    esmtp: bool
    extensions: Extensions


@dataclass(frozen=True, slots=True)
class StartTLSReply:
    """The reply to STARTTLS; after 220 do the handshake, then `tls_established()`."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class AuthReply:
    """The final reply to AUTH (235 on success)."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class ReadyForData:
    """DATA got 354 with at least one recipient accepted: send the content now."""

    mail: Reply
    recipients: tuple[RecipientReply, ...]


@dataclass(frozen=True, slots=True)
class TransactionComplete:
    """A transaction is over, delivered or not (see `TransactionResult.outcome`)."""

    result: TransactionResult


@dataclass(frozen=True, slots=True)
class CommandReply:
    """The reply to a command the caller sent itself: RSET, NOOP or QUIT."""

    verb: Literal["RSET", "NOOP", "QUIT"]
    reply: Reply


@dataclass(frozen=True, slots=True)
class ServiceClosing:
    """The server sent 421 (RFC 5321 3.8): it is closing the connection.

    `transaction` is the transaction in progress, if any, with every reply that had
    not arrived set to this 421 (so `outcome()` defers those recipients while
    keeping permanent RCPT rejections that came first).
    """

    reply: Reply
    transaction: TransactionResult | None = None


ClientEvent = (
    Greeting
    | HelloReply
    | StartTLSReply
    | AuthReply
    | ReadyForData
    | TransactionComplete
    | CommandReply
    | ServiceClosing
    | ConnectionClosed
)
