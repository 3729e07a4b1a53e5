"""relay's exception hierarchy (a leaf module: imports nothing from relay).

Parsing errors raised by fastparse are the same classes whichever implementation
(compiled or pure Python) is in use.  Protocol errors follow h11's split: a
*local* protocol error means our own code asked for something the protocol does not
allow; a *remote* protocol error means the peer sent something wrong and carries
the SMTP reply we should answer with.
"""

from __future__ import annotations


class RelayError(Exception):
    """Base of every error relay raises on purpose."""


# --- fastparse -------------------------------------------------------------------


class ParseError(RelayError):
    """Base of the errors raised by relay.fastparse."""


class LineTooLongError(ParseError):
    """A command or text line exceeded its limit (RFC 5321 4.5.3.1)."""


class BareLineEndingError(ParseError):
    """A bare CR or a bare LF where only CRLF is allowed (RFC 5321 2.3.8)."""


class MessageTooLargeError(ParseError):
    """The message data exceeded the size limit (RFC 1870)."""


class ReplyParseError(ParseError):
    """A malformed SMTP reply (RFC 5321 4.2)."""


# --- SMTP protocol ---------------------------------------------------------------


class ProtocolError(RelayError):
    """Base of SMTP protocol errors."""


class LocalProtocolError(ProtocolError):
    """Our side tried to do something the protocol state does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer violated the protocol; `code`/`enhanced`/`text` is the reply to send."""

    def __init__(self, code: int, enhanced: str | None, text: str) -> None:
        super().__init__(f"{code} {enhanced + ' ' if enhanced else ''}{text}")
        self.code = code
        self.enhanced = enhanced
        self.text = text


# --- spool -------------------------------------------------------------------------


class SpoolError(RelayError):
    """Base of spool failures; the message was NOT stored."""


class SpoolFullError(SpoolError):
    """The LMDB map is full (SMTP: 452 4.3.1; HTTP: 503 with Retry-After)."""


class SpoolIOError(SpoolError):
    """A disk or LMDB error other than a full map (SMTP: 451 4.3.0; HTTP: 503)."""


class SpoolTimeoutError(SpoolError):
    """The write did not commit before its deadline (SMTP: 451 4.3.0)."""


class RecordError(SpoolError):
    """A spool record could not be decoded (unknown type/version or corrupt)."""


class UnknownMessageError(SpoolError, KeyError):
    """No message with that id in the spool."""


# --- configuration -------------------------------------------------------------------


class ConfigError(RelayError):
    """Invalid configuration: the message names the key, the file and what is expected."""


# --- network: DNS, outbound connect, TLS (raised by relay.net) ------------------------


class NetError(RelayError):
    """Base of the network adapter errors."""


class DnsError(NetError):
    """A DNS lookup did not give a usable answer.

    `enhanced` is the RFC 3463 status code to report (e.g. "5.1.10"), `text` a
    short human-readable reason, `name` the name that was looked up.
    """

    def __init__(self, name: str, enhanced: str, text: str) -> None:
        super().__init__(f"{enhanced} {name}: {text}")
        self.name = name
        self.enhanced = enhanced
        self.text = text


class DnsPermanentError(DnsError):
    """The answer says mail cannot be delivered (NXDOMAIN, null MX, no address): bounce."""


class DnsTemporaryError(DnsError):
    """The lookup failed for now (SERVFAIL, timeout, unreachable servers): retry later."""


class ConnectFailedError(NetError):
    """No outbound TCP connection could be made; `attempts` is each (address, reason)."""

    def __init__(self, port: int, attempts: list[tuple[str, str]]) -> None:
        tried = "; ".join(f"{address}: {reason}" for address, reason in attempts) or "none"
        super().__init__(f"could not connect to port {port} (tried {tried})")
        self.port = port
        self.attempts = attempts


class TlsHandshakeError(NetError):
    """The TLS handshake failed or timed out; the connection has been closed."""

    def __init__(self, reason: str, *, timed_out: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.timed_out = timed_out


class DuplicateMessageError(SpoolError):
    """A message with that id is already queued (a pre-assigned id was used twice)."""
