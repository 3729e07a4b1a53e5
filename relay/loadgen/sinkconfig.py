"""What a sink is told to be: `SinkConfig`, its `Faults` and its `ReceiverPolicy`.

Plain frozen values, checked when built, so a bad command-line option fails
before any socket is opened.  They pickle, so worker processes get them as is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Final

__all__ = [
    "FAULT_STAGES",
    "CommandFault",
    "Faults",
    "ReceiverPolicy",
    "ScriptedReply",
    "SinkConfig",
]

#: The commands a fault can hit, in protocol order.
FAULT_STAGES: Final = ("mail", "rcpt", "data", "end_of_data")

#: A fixed reply: (code, enhanced status code, text), e.g. (550, "5.1.1", "No such user").
ScriptedReply = tuple[int, str, str]


@dataclass(frozen=True, slots=True)
class CommandFault:
    """What goes wrong with one command: a chance of 4xx, a chance of 5xx, a delay."""

    temporary: float = 0.0  # probability of a 4xx reply
    permanent: float = 0.0  # probability of a 5xx reply
    delay: float = 0.0  # seconds added before the reply

    def __post_init__(self) -> None:
        for name in ("temporary", "permanent"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability between 0 and 1, not {value}")
        if self.temporary + self.permanent > 1.0:
            raise ValueError("temporary + permanent must not exceed 1")
        if not 0.0 <= self.delay < math.inf:
            raise ValueError(f"delay must be a finite number of seconds >= 0, not {self.delay}")

    @property
    def active(self) -> bool:
        """True when this fault can change anything."""
        return bool(self.temporary or self.permanent or self.delay)


@dataclass(frozen=True, slots=True)
class Faults:
    """Injected failures, drawn from one RNG seeded with `seed` (None: unpredictable).

    `disconnect_after` N: right after a connection's Nth accepted message the sink
    sends an unsolicited ``421 4.3.2`` and closes.  `tarpit` > 0 sends every reply
    byte by byte with that many seconds between bytes.  `recipients` gives fixed
    replies to some RCPT addresses (compared case-insensitively), for tests that
    need a deterministic 550 or 452.
    """

    mail: CommandFault = CommandFault()
    rcpt: CommandFault = CommandFault()
    data: CommandFault = CommandFault()
    end_of_data: CommandFault = CommandFault()
    disconnect_after: int = 0
    tarpit: float = 0.0
    recipients: Mapping[str, ScriptedReply] = field(default_factory=dict)
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.disconnect_after < 0:
            raise ValueError("disconnect_after must be >= 0 (0: never)")
        if not 0.0 <= self.tarpit < math.inf:
            raise ValueError("tarpit must be a finite number of seconds >= 0")
        for address, (code, enhanced, _text) in self.recipients.items():
            if not 200 <= code <= 599 or (code < 400 and code not in (250, 251)):
                raise ValueError(f"scripted reply for {address}: code {code} not usable")
            if enhanced and enhanced[0] != str(code)[0]:
                raise ValueError(f"scripted reply for {address}: {enhanced} does not fit {code}")
        lowered = {address.lower(): reply for address, reply in self.recipients.items()}
        object.__setattr__(self, "recipients", MappingProxyType(lowered))

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        # MappingProxyType does not pickle: rebuild from a plain dict.
        return (
            Faults,
            (
                self.mail,
                self.rcpt,
                self.data,
                self.end_of_data,
                self.disconnect_after,
                self.tarpit,
                dict(self.recipients),
                self.seed,
            ),
        )

    def stage(self, name: str) -> CommandFault:
        """The fault of one of FAULT_STAGES."""
        fault: CommandFault = getattr(self, name)
        return fault


@dataclass(frozen=True, slots=True)
class ReceiverPolicy:
    """Limits as mailbox providers enforce them (0: no limit).

    Beyond `max_connections_per_client` concurrent connections from one address a
    new connection gets ``421 4.7.0`` instead of the greeting; beyond
    `max_messages_per_connection` the next MAIL gets ``421 4.7.0`` and the
    connection closes; beyond `max_message_rate` messages per second from one
    address (a token bucket holding `rate_burst` messages, default: one second's
    worth) MAIL gets ``450 4.7.1``.  With several worker processes each enforces
    its own limits.
    """

    max_connections_per_client: int = 0
    max_messages_per_connection: int = 0
    max_message_rate: float = 0.0
    rate_burst: int = 0

    def __post_init__(self) -> None:
        if self.max_connections_per_client < 0 or self.max_messages_per_connection < 0:
            raise ValueError("policy limits must be >= 0 (0: no limit)")
        if not 0.0 <= self.max_message_rate < math.inf or self.rate_burst < 0:
            raise ValueError("max_message_rate and rate_burst must be >= 0")

    @property
    def burst(self) -> int:
        """The token bucket's size."""
        return self.rate_burst or max(1, math.ceil(self.max_message_rate))


@dataclass(frozen=True, slots=True)
class SinkConfig:
    """Everything about one sink (or each of its worker processes).

    TLS: `starttls` offers STARTTLS, `implicit_tls` makes every connection TLS from
    the first byte (port 465 style); both use `cert_file`/`key_file`, or a
    self-signed certificate for `hostname` generated into a temporary directory.
    `auth_users` (name -> password) makes the sink offer AUTH PLAIN and LOGIN (in
    cleartext too, unless `auth_requires_tls`) and require it for MAIL.
    `record` keeps a ReceivedMessage per accepted message (`record_content` with
    its content); both grow with every message.
    """

    host: str = "127.0.0.1"
    port: int = 0
    hostname: str = "sink.test"
    pipelining: bool = True
    starttls: bool = False
    implicit_tls: bool = False
    cert_file: Path | None = None
    key_file: Path | None = None
    auth_users: Mapping[str, str] = field(default_factory=dict)
    auth_requires_tls: bool = False
    max_message_size: int = 64 * 1024 * 1024
    faults: Faults = Faults()
    policy: ReceiverPolicy = ReceiverPolicy()
    record: bool = True
    record_content: bool = False
    idle_timeout: float = 300.0
    max_connections: int = 10_000
    reuse_port: bool = True
    backlog: int = 4096

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0-65535, not {self.port}")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("give both cert_file and key_file, or neither")
        if self.starttls and self.implicit_tls:
            raise ValueError("choose STARTTLS or implicit TLS, not both")
        if self.max_message_size < 0 or self.max_connections < 1:
            raise ValueError("max_message_size must be >= 0 and max_connections >= 1")
        if not 0.0 < self.idle_timeout < math.inf:
            raise ValueError("idle_timeout must be a positive number of seconds")
        if self.record_content and not self.record:
            raise ValueError("record_content needs record=True")
        object.__setattr__(self, "auth_users", MappingProxyType(dict(self.auth_users)))

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        values = [getattr(self, name) for name in self.__dataclass_fields__]
        values[list(self.__dataclass_fields__).index("auth_users")] = dict(self.auth_users)
        return (SinkConfig, tuple(values))

    @property
    def tls(self) -> bool:
        """True when the sink needs a certificate."""
        return self.starttls or self.implicit_tls
