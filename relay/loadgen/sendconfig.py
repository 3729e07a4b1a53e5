"""What a load run does: `SendConfig`, checked when built."""

from __future__ import annotations

import ipaddress
import math
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from relay.proto import AddressError, parse_mailbox

__all__ = ["DEFAULT_MESSAGES", "SendConfig", "TlsChoice", "new_run_id", "target_address"]

TlsChoice = Literal["none", "starttls", "implicit"]

#: Messages sent when neither a count nor a duration is given.
DEFAULT_MESSAGES: Final = 1000


def new_run_id() -> str:
    """A fresh run id: 8 hex digits, the prefix of a run's X-Bench-Id values."""
    return secrets.token_hex(4)


def target_address(host: str) -> str:
    """The IP address to connect to: `host` must be an IP literal or 'localhost'.

    Names are never resolved (a load generator pointed at a name by mistake
    could load someone else's server); 'localhost' means 127.0.0.1.
    """
    if host.lower() == "localhost":
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        raise ValueError(f"target {host!r}: give an IP address (or 'localhost')") from None


@dataclass(frozen=True, slots=True)
class SendConfig:
    """A load run against one SMTP server.

    The run stops after `messages` messages (default DEFAULT_MESSAGES), or when
    `duration` seconds have passed if that is given instead, and always after
    `time_limit` seconds.  `messages_per_connection` 0 keeps each session's
    connection for as long as it has work.  `rate` (messages per second, 0: no
    cap) is shared by all sessions.  With `cafile` the server's certificate is
    verified against it for `tls_hostname` (default: the host as given);
    otherwise TLS encrypts without checking, as benchmarks usually want.
    """

    host: str
    port: int = 25
    sessions: int = 10
    messages: int | None = None
    duration: float | None = None
    time_limit: float = 3600.0
    size: int = 5120
    recipients: int = 1
    domains: tuple[tuple[str, int], ...] = (("example.test", 1),)
    sender: str = "bench@loadgen.test"
    messages_per_connection: int = 0
    auth: tuple[str, str] | None = field(default=None, repr=False)
    tls: TlsChoice = "none"
    cafile: Path | None = None
    tls_hostname: str | None = None
    pipelining: bool = True
    rate: float = 0.0
    helo: str = "loadgen.test"
    reply_timeout: float = 60.0
    connect_timeout: float = 10.0
    run_id: str = field(default_factory=new_run_id)

    def __post_init__(self) -> None:
        target_address(self.host)
        if not 0 < self.port <= 65535:
            raise ValueError(f"port must be 1-65535, not {self.port}")
        if self.sessions < 1 or self.recipients < 1 or self.size < 0:
            raise ValueError("sessions and recipients must be >= 1, size >= 0")
        if self.messages is not None and self.duration is not None:
            raise ValueError("give a number of messages or a duration, not both")
        if self.messages is not None and self.messages < 0:
            raise ValueError("messages must be >= 0")
        for name in ("duration", "time_limit", "reply_timeout", "connect_timeout"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value < math.inf:
                raise ValueError(f"{name} must be a positive number of seconds")
        if self.messages_per_connection < 0 or not 0.0 <= self.rate < math.inf:
            raise ValueError("messages_per_connection and rate must be >= 0")
        if self.tls not in ("none", "starttls", "implicit"):
            raise ValueError("tls must be 'none', 'starttls' or 'implicit'")
        if not self.domains:
            raise ValueError("at least one recipient domain is needed")
        if not self.run_id or not self.run_id.replace("-", "").isalnum():
            raise ValueError("run_id must be letters, digits and dashes")
        try:
            parse_mailbox(self.sender)
        except AddressError as exc:
            raise ValueError(f"invalid sender {self.sender!r}: {exc}") from None

    @property
    def address(self) -> str:
        """The IP address connected to."""
        return target_address(self.host)

    @property
    def total(self) -> int | None:
        """The number of messages to send, or None for a run by duration."""
        if self.duration is not None:
            return None
        return DEFAULT_MESSAGES if self.messages is None else self.messages

    def describe(self) -> dict[str, object]:
        """The parameters, for reports (the password left out)."""
        return {
            "target": f"{self.host}:{self.port}",
            "sessions": self.sessions,
            "messages": self.total,
            "duration": self.duration,
            "size": self.size,
            "recipients": self.recipients,
            "domains": ",".join(f"{d}:{w}" for d, w in self.domains),
            "messages_per_connection": self.messages_per_connection,
            "auth": self.auth[0] if self.auth else None,
            "tls": self.tls,
            "pipelining": self.pipelining,
            "rate": self.rate,
            "run_id": self.run_id,
        }
