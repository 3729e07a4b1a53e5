"""Typed configuration: one TOML file, validated at start, with environment overrides.

Theory of operation: the configuration is a tree of frozen dataclasses whose field
types and defaults ARE the schema.  `load_config()` walks the TOML document against
that tree: an unknown key, a value of the wrong type or an impossible value raises
ConfigError naming the key (dotted), the file and what was expected.  Durations may
be written as numbers of seconds or strings like "90s", "5m", "4h", "5d"; sizes as
numbers of bytes or strings like "512KiB", "50MB", "64GiB".  Environment variables
`RELAY_<SECTION>_<KEY>` (upper case) override file values, e.g.
`RELAY_SUBMISSION_MAX_RECIPIENTS=500`; list values in the environment are
comma-separated.  Every default is usable as is: `Config()` is the embedded
development configuration (loopback listeners, data under ./relay-data).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from relay.errors import ConfigError

Duration = typing.NewType("Duration", float)
Size = typing.NewType("Size", int)

TlsMode = Literal["opportunistic", "required", "required-verify", "disabled"]


@dataclass(frozen=True)
class ServerConfig:
    """Process-wide settings."""

    hostname: str = "relay.localhost"  # greeting, EHLO and Received name; never from DNS
    data_dir: str = "relay-data"
    workers: int = 0  # shard processes; 0 = one per core (the default)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_json: bool | None = None  # None: JSON when stderr is not a terminal
    shutdown_grace: Duration = Duration(25.0)


@dataclass(frozen=True)
class SpoolConfig:
    """The LMDB spool of each shard."""

    map_size: Size = Size(64 << 30)
    max_age: Duration = Duration(5 * 86400.0)  # then pending recipients bounce with 4.4.7
    completed_ttl: Duration = Duration(7 * 86400.0)
    write_timeout: Duration = Duration(30.0)


@dataclass(frozen=True)
class TlsConfig:
    """Server certificate; empty paths mean a generated self-signed certificate."""

    cert_file: str = ""
    key_file: str = ""


@dataclass(frozen=True)
class SubmissionConfig:
    """Authenticated submission listeners and their limits."""

    listen: tuple[str, ...] = ("127.0.0.1:5870",)  # plain + STARTTLS (587 in production)
    listen_tls: tuple[str, ...] = ("127.0.0.1:4650",)  # implicit TLS (465 in production)
    require_tls: bool = True  # RFC 8314: AUTH and MAIL only after STARTTLS on the 587 port
    # RFC 1870 SIZE, advertised in EHLO and enforced at MAIL and after DATA.
    max_message_size: Size = Size(50 << 20)
    # RFC 5321 4.5.3.1.8 requires at least 100; we refuse beyond this with 452 4.5.3.
    max_recipients: int = 1000
    # RFC 5321 4.5.3.1.4: command lines are at most 512 octets including CRLF.
    max_command_line: int = 512
    # RFC 5321 4.5.3.1.6: text lines are at most 1000 octets including CRLF.
    max_text_line: int = 1000
    max_errors: int = 10  # protocol errors before 421 and disconnect
    max_messages_per_connection: int = 10_000
    max_connections: int = 2000
    max_connections_per_ip: int = 100
    # RFC 5321 4.5.3.2: minimum server timeouts (5 min command, 3 min data block, 10 min end).
    greeting_delay: Duration = Duration(0.0)  # early-talker detection window
    command_timeout: Duration = Duration(300.0)
    data_timeout: Duration = Duration(600.0)
    tls_handshake_timeout: Duration = Duration(30.0)
    bare_line_ending: Literal["reject", "normalize"] = "reject"
    tenant_header: str = "X-Tenant"
    campaign_header: str = "X-Campaign"
    allow_tenant_header: bool = False  # else the tenant is the authenticated user's


@dataclass(frozen=True)
class RelayPortConfig:
    """Optional port-25 listener relaying only for trusted networks (never an open relay)."""

    listen: tuple[str, ...] = ()
    trusted_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")


@dataclass(frozen=True)
class AuthConfig:
    """Brute-force protection for AUTH."""

    max_failures: int = 5  # per client address within `failure_window`
    failure_window: Duration = Duration(300.0)
    lockout: Duration = Duration(900.0)
    failure_delay: Duration = Duration(1.0)  # added per recent failure, capped at 5 s


@dataclass(frozen=True)
class RouteConfig:
    """A static route: a domain (or "*") goes to a fixed host:port instead of its MX."""

    domain: str = "*"
    host: str = "127.0.0.1"
    port: int = 25
    tls: TlsMode = "opportunistic"
    username: str = ""
    password: str = ""


@dataclass(frozen=True)
class EgressSourceConfig:
    """A source address to bind outbound connections to, with its EHLO name."""

    name: str = "default"
    address: str = ""  # "" = let the kernel choose
    ehlo_name: str = ""  # "" = server.hostname
    weight: int = 1


@dataclass(frozen=True)
class DeliveryConfig:
    """Outbound delivery and shaping defaults (per MX site, split among shards)."""

    nameservers: tuple[str, ...] = ()  # () = the system's resolvers
    dns_port: int = 53
    dns_timeout: Duration = Duration(5.0)
    mx_port: int = 25  # the port MX hosts are reached on (tests and lab setups change it)
    tls: TlsMode = "opportunistic"
    ca_file: str = ""  # for required-verify; "" = the system's CA store
    max_sessions_per_site: int = 20
    initial_sessions_per_site: int = 4
    max_messages_per_connection: int = 100
    max_recipients_per_transaction: int = 100
    message_rate_per_site: float = 0.0  # messages/s; 0 = unlimited
    connection_rate_per_site: float = 0.0  # connections/s; 0 = unlimited
    connect_timeout: Duration = Duration(30.0)
    # RFC 5321 4.5.3.2: client timeouts (greeting 5 min, MAIL 5, RCPT 5, DATA 2, end 10).
    command_timeout: Duration = Duration(300.0)
    data_end_timeout: Duration = Duration(600.0)
    idle_session_timeout: Duration = Duration(5.0)
    retry_min: Duration = Duration(300.0)
    retry_max: Duration = Duration(4 * 3600.0)
    tls_failure_memory: Duration = Duration(3600.0)
    pools: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # tenant -> sources


#: The event vocabulary of the event log and the webhooks (relay.events).
EventName = Literal["accepted", "delivered", "deferred", "bounced", "expired", "rejected"]


@dataclass(frozen=True)
class WebhookConfig:
    """One webhook endpoint: event batches are POSTed there, signed with `secret`."""

    url: str = ""  # http:// or https://
    secret: str = ""  # HMAC-SHA256 key of the X-Relay-Signature header (16+ characters)
    events: tuple[EventName, ...] = ()  # () = every event


@dataclass(frozen=True)
class ApiConfig:
    """The HTTP send API, message status, metrics and webhooks (relay.api, relay.events)."""

    enabled: bool = True
    listen: tuple[str, ...] = ("127.0.0.1:8025",)  # shared by every shard (SO_REUSEPORT)
    max_body_size: Size = Size(32 << 20)  # request bodies (JSON with base64 attachments)
    max_recipients: int = 1000  # per request: to+cc+bcc, or entries of `recipients`
    max_batch_bytes: Size = Size(256 << 20)  # the messages one batch request builds, together
    # How far ahead send_at may be; never more than spool.max_age less an hour (the
    # queue lifetime counts from acceptance: mail needs time left to be delivered).
    max_send_at_delay: Duration = Duration(3 * 86400.0)
    idempotency_ttl: Duration = Duration(86400.0)
    request_timeout: Duration = Duration(60.0)  # waiting for an Idempotency-Key held elsewhere
    # Events in the structured log: "others" logs those no component logs per recipient
    # already (bounced, expired, rejected; ingest logs "accepted" and delivery
    # "delivery.outcome"); "all" logs every event once more as an "event" line.
    log_events: Literal["all", "others", "none"] = "others"
    webhooks: tuple[WebhookConfig, ...] = ()
    webhook_batch_size: int = 100  # events per POST
    webhook_timeout: Duration = Duration(10.0)  # per POST
    webhook_retry_min: Duration = Duration(1.0)
    webhook_retry_max: Duration = Duration(300.0)
    webhook_retention: Duration = Duration(3 * 86400.0)  # then undeliverable batches drop
    webhook_flush_interval: Duration = Duration(0.2)  # events gathered per queue write
    # Bearer tokens of the admin API (/admin/v1/...) and the /status page's data; any
    # one of them is accepted (several allow rotation).  Empty: the admin API is off (404).
    admin_tokens: tuple[str, ...] = ()


DkimAlgorithm = Literal["rsa-sha256", "ed25519-sha256"]

#: Signed when present (RFC 6376 5.4.1): the fields a reader sees and the ones
#: that carry the unsubscribe and feedback promises of bulk mail (RFC 8058, RFC 2369).
DKIM_DEFAULT_HEADERS = (
    "From", "To", "Cc", "Subject", "Date", "Message-ID", "Reply-To", "MIME-Version",
    "Content-Type", "Content-Transfer-Encoding", "List-Unsubscribe", "List-Unsubscribe-Post",
    "Feedback-ID", "In-Reply-To", "References",
)  # fmt: skip


@dataclass(frozen=True)
class DkimKeyConfig:
    """One signing key: mail of `domain` is signed as d=`domain`, s=`selector`."""

    domain: str = ""
    selector: str = ""
    key_file: str = ""  # PEM private key (PKCS#8 or PKCS#1), unencrypted
    algorithm: DkimAlgorithm = "rsa-sha256"


@dataclass(frozen=True)
class DkimConfig:
    """DKIM signing at ingest (RFC 6376; Ed25519 per RFC 8463); off without keys."""

    # <key_dir>/<domain>/<selector>.<rsa|ed25519>.pem, or flat:
    # <key_dir>/<selector>._domainkey.<domain>.<rsa|ed25519>.pem ("" = no directory)
    key_dir: str = ""
    keys: tuple[DkimKeyConfig, ...] = ()  # a domain named here ignores key_dir
    headers: tuple[str, ...] = DKIM_DEFAULT_HEADERS
    oversign: tuple[str, ...] = ("From",)  # signed once more than present (RFC 6376 5.4.2)


@dataclass(frozen=True)
class Config:
    """The whole configuration."""

    server: ServerConfig = field(default_factory=ServerConfig)
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    submission: SubmissionConfig = field(default_factory=SubmissionConfig)
    relay_port: RelayPortConfig = field(default_factory=RelayPortConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    dkim: DkimConfig = field(default_factory=DkimConfig)
    routes: tuple[RouteConfig, ...] = ()
    egress: tuple[EgressSourceConfig, ...] = ()
    source: str = "<defaults>"  # where it was loaded from (not a TOML key)

    @property
    def data_path(self) -> Path:
        return Path(self.server.data_dir)


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB|TB|TiB)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1, "kb": 1000, "kib": 1 << 10, "mb": 1000**2, "mib": 1 << 20,
    "gb": 1000**3, "gib": 1 << 30, "tb": 1000**4, "tib": 1 << 40,
}  # fmt: skip


def parse_duration(value: object) -> float:
    """Seconds from a number or a string like "90s", "5m", "4h", "5d"."""
    if isinstance(value, bool):
        raise ValueError("a duration (seconds, or a string like '5m')")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration that is not negative")
        return float(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    raise ValueError("a duration (seconds, or a string like '90s', '5m', '4h', '5d')")


def parse_size(value: object) -> int:
    """Bytes from a number or a string like "512KiB", "50MB", "64GiB"."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("a size that is not negative")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            return int(m.group(1)) * _SIZE_UNITS[(m.group(2) or "b").lower()]
    raise ValueError("a size (bytes, or a string like '512KiB', '50MB', '64GiB')")


def parse_hostport(
    value: str, *, default_port: int | None = None, allow_zero: bool = True
) -> tuple[str, int]:
    """("host", port) from "host:port" or "[v6]:port"; port 0 (listeners: any free
    port) only with `allow_zero`."""
    host, sep, port = value.rpartition(":")
    if not sep:
        if default_port is None:
            raise ValueError(f"host:port, got {value!r}")
        host, port = value, str(default_port)
    host = host.strip("[]")
    lowest = 0 if allow_zero else 1
    if not host or not port.isdigit() or not lowest <= int(port) < 65536:
        raise ValueError(f"host:port with a port from {lowest} to 65535, got {value!r}")
    return host, int(port)


def _convert(tp: Any, value: Any, key: str, where: str) -> Any:
    """Convert and check one value against the annotated type `tp`."""

    def fail(expected: str) -> ConfigError:
        return ConfigError(f"{where}: {key}: expected {expected}, got {value!r}")

    if tp is Duration:
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise fail(str(exc)) from None
    if tp is Size:
        try:
            return parse_size(value)
        except ValueError as exc:
            raise fail(str(exc)) from None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        if value not in args:
            raise fail("one of " + ", ".join(repr(a) for a in args))
        return value
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, key, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise fail(" or ".join(str(a) for a in args))
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise fail("a list")
        item_type = args[0]
        return tuple(_convert(item_type, v, f"{key}[{i}]", where) for i, v in enumerate(value))
    if origin is Mapping or origin is dict:
        if not isinstance(value, dict):
            raise fail("a table")
        vt = args[1]
        return {str(k): _convert(vt, v, f"{key}.{k}", where) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise fail("a table")
        return _build(tp, value, key, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("an integer")
        if value < 0:
            raise fail("an integer that is not negative")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise fail("a number")
        if value < 0:
            raise fail("a number that is not negative")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise fail("a string")
        return value
    raise fail(f"a value of type {tp}")  # pragma: no cover - schema error


def _build(cls: Any, table: Mapping[str, Any], prefix: str, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.name != "source"}
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if key not in names:
            known = ", ".join(sorted(names))
            raise ConfigError(f"{where}: unknown key {dotted!r} (known here: {known})")
        kwargs[key] = _convert(hints[key], value, dotted, where)
    return cls(**kwargs)


def _env_overrides(env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """RELAY_<SECTION>_<KEY>=value pairs as a nested table (values still strings)."""
    out: dict[str, dict[str, Any]] = {}
    sections = {
        f.name: typing.get_type_hints(Config)[f.name]
        for f in dataclasses.fields(Config)
        if dataclasses.is_dataclass(typing.get_type_hints(Config)[f.name])
    }
    for name, raw in env.items():
        if not name.startswith("RELAY_") or name == "RELAY_NO_EXTENSIONS":
            continue
        rest = name[len("RELAY_") :].lower()
        for section, cls in sections.items():
            if not rest.startswith(section + "_"):
                continue
            key = rest[len(section) + 1 :]
            hints = typing.get_type_hints(cls)
            if key not in hints:
                continue
            out.setdefault(section, {})[key] = _from_env_string(hints[key], raw)
    return out


def _from_env_string(tp: Any, raw: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is tuple:
        return [item.strip() for item in raw.split(",") if item.strip()]
    if tp is bool or (origin in (types.UnionType, typing.Union) and bool in typing.get_args(tp)):
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        return raw
    if tp is int:
        return int(raw) if raw.strip().lstrip("-").isdigit() else raw
    if tp is float:
        try:
            return float(raw)
        except ValueError:
            return raw
    return raw


def _validate(cfg: Config) -> None:
    where = cfg.source

    def bad(key: str, msg: str) -> ConfigError:
        return ConfigError(f"{where}: {key}: {msg}")

    for key, addrs in (
        ("submission.listen", cfg.submission.listen),
        ("submission.listen_tls", cfg.submission.listen_tls),
        ("relay_port.listen", cfg.relay_port.listen),
    ):
        for a in addrs:
            try:
                parse_hostport(a)
            except ValueError as exc:
                raise bad(key, f"expected {exc}") from None
    for net in cfg.relay_port.trusted_networks:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise bad("relay_port.trusted_networks", f"{net!r} is not a CIDR network") from None
    if bool(cfg.tls.cert_file) != bool(cfg.tls.key_file):
        raise bad("tls", "cert_file and key_file go together: set both or neither")
    for path_key, path in (
        ("tls.cert_file", cfg.tls.cert_file),
        ("tls.key_file", cfg.tls.key_file),
    ):
        if path and not Path(path).is_file():
            raise bad(path_key, f"no such file: {path}")
    if cfg.submission.max_command_line < 512:
        raise bad("submission.max_command_line", "RFC 5321 4.5.3.1.4 requires at least 512")
    if cfg.submission.max_text_line < 1000:
        raise bad("submission.max_text_line", "RFC 5321 4.5.3.1.6 requires at least 1000")
    if cfg.submission.max_recipients < 1:
        raise bad("submission.max_recipients", "must be at least 1")
    if cfg.delivery.max_sessions_per_site < 1:
        raise bad("delivery.max_sessions_per_site", "must be at least 1")
    if cfg.delivery.initial_sessions_per_site < 1:
        raise bad("delivery.initial_sessions_per_site", "must be at least 1")
    if cfg.delivery.max_messages_per_connection < 1:
        raise bad("delivery.max_messages_per_connection", "must be at least 1")
    if cfg.delivery.max_recipients_per_transaction < 1:
        raise bad("delivery.max_recipients_per_transaction", "must be at least 1")
    if cfg.delivery.retry_min > cfg.delivery.retry_max:
        raise bad("delivery.retry_min", "must not exceed delivery.retry_max")
    if not cfg.server.hostname or " " in cfg.server.hostname:
        raise bad("server.hostname", "must be a host name")
    for i, ns in enumerate(cfg.delivery.nameservers):
        try:
            ipaddress.ip_address(ns)
        except ValueError:
            raise bad(f"delivery.nameservers[{i}]", f"{ns!r} is not an IP address") from None
    seen = set()
    for i, route in enumerate(cfg.routes):
        if route.domain in seen:
            raise bad(f"routes[{i}].domain", f"{route.domain!r} is routed twice")
        seen.add(route.domain)
        if not 0 < route.port < 65536:
            raise bad(f"routes[{i}].port", "must be from 1 to 65535")
    names = {e.name for e in cfg.egress} | {"default"}
    for tenant, sources in cfg.delivery.pools.items():
        for s in sources:
            if s not in names:
                raise bad(f"delivery.pools.{tenant}", f"unknown egress source {s!r}")
    _validate_api(cfg.api, bad)
    _validate_dkim(cfg.dkim, bad)


def _validate_api(api: ApiConfig, bad: Callable[[str, str], ConfigError]) -> None:
    for a in api.listen:
        try:
            parse_hostport(a)
        except ValueError as exc:
            raise bad("api.listen", f"expected {exc}") from None
    if api.max_recipients < 1:
        raise bad("api.max_recipients", "must be at least 1")
    if api.max_body_size < 1024:
        raise bad("api.max_body_size", "must be at least 1KiB")
    if api.webhook_batch_size < 1:
        raise bad("api.webhook_batch_size", "must be at least 1")
    if api.webhook_retry_min <= 0 or api.webhook_retry_min > api.webhook_retry_max:
        raise bad("api.webhook_retry_min", "must be above 0 and not exceed webhook_retry_max")
    if api.webhook_flush_interval <= 0:
        raise bad("api.webhook_flush_interval", "must be above 0")
    seen: set[str] = set()
    for i, hook in enumerate(api.webhooks):
        if not re.fullmatch(r"https?://[^\s/?#]+[^\s]*", hook.url):
            raise bad(
                f"api.webhooks[{i}].url", f"expected an http:// or https:// URL, got {hook.url!r}"
            )
        if hook.url in seen:
            raise bad(f"api.webhooks[{i}].url", f"{hook.url!r} is configured twice")
        seen.add(hook.url)
        if len(hook.secret) < 16:
            raise bad(f"api.webhooks[{i}].secret", "must have at least 16 characters")
    for i, token in enumerate(api.admin_tokens):
        if len(token) < 16 or not token.isascii() or not token.isprintable() or " " in token:
            raise bad(
                f"api.admin_tokens[{i}]",
                "must be at least 16 printable ASCII characters, no spaces",
            )


_HEADER_FIELD_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 2.2
_DNS_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DKIM_SELECTOR = re.compile(rf"{_DNS_LABEL}(?:\.{_DNS_LABEL})*")  # RFC 6376 3.1
_DOMAIN_NAME = re.compile(rf"(?:{_DNS_LABEL}\.)+{_DNS_LABEL}")


def _validate_dkim(dkim: DkimConfig, bad: Callable[[str, str], ConfigError]) -> None:
    if dkim.key_dir and not Path(dkim.key_dir).is_dir():
        raise bad("dkim.key_dir", f"no such directory: {dkim.key_dir}")
    for key, names in (("dkim.headers", dkim.headers), ("dkim.oversign", dkim.oversign)):
        for i, name in enumerate(names):
            if not _HEADER_FIELD_NAME.fullmatch(name):
                raise bad(f"{key}[{i}]", f"{name!r} is not a header field name")
    if "from" not in {h.lower() for h in dkim.headers}:
        raise bad("dkim.headers", "must include From (RFC 6376 5.4)")
    for i, name in enumerate(dkim.oversign):
        if name.lower() in ("received", "return-path", "dkim-signature"):
            raise bad(
                f"dkim.oversign[{i}]",
                f"{name} is added in transit: oversigning it breaks the signature",
            )
    seen: set[tuple[str, str]] = set()
    for i, entry in enumerate(dkim.keys):
        domain = entry.domain.strip().rstrip(".").lower()
        try:
            ascii_name = domain.encode("idna").decode("ascii")
        except UnicodeError:
            ascii_name = ""
        if not _DOMAIN_NAME.fullmatch(ascii_name):
            raise bad(f"dkim.keys[{i}].domain", f"expected a domain name, got {entry.domain!r}")
        if not _DKIM_SELECTOR.fullmatch(entry.selector):
            raise bad(
                f"dkim.keys[{i}].selector",
                f"expected dot-separated labels of letters, digits and hyphens (RFC 6376 3.1), got {entry.selector!r}",
            )
        if not entry.key_file:
            raise bad(f"dkim.keys[{i}].key_file", "expected the path of a PEM private key")
        if not Path(entry.key_file).is_file():
            raise bad(f"dkim.keys[{i}].key_file", f"no such file: {entry.key_file}")
        if (ascii_name, entry.algorithm) in seen:
            raise bad(
                f"dkim.keys[{i}]",
                f"a second {entry.algorithm} key for {entry.domain}: one key per algorithm and domain",
            )
        seen.add((ascii_name, entry.algorithm))


def load_config(
    path: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None
) -> Config:
    """Read, override from the environment, and validate; ConfigError on any problem."""
    env = os.environ if env is None else env
    where = str(path) if path is not None else "<defaults>"
    doc: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"{where}: no such configuration file") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    # TOML spells arrays of tables [[route]] / [[egress]]; accept both singular and plural.
    for singular, plural in (("route", "routes"), ("egress_source", "egress")):
        if singular in doc:
            doc.setdefault(plural, doc.pop(singular))
    for section, values in _env_overrides(env).items():
        table = doc.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: {section}: expected a table")
        table.update(values)
    cfg: Config = _build(Config, doc, "", where)
    cfg = dataclasses.replace(cfg, source=where)
    _validate(cfg)
    return cfg


def spool_root(cfg: Config) -> Path:
    """The directory holding one LMDB environment per shard."""
    return cfg.data_path / "spool"


def shard_dir(cfg: Config, shard: int) -> Path:
    """The spool environment of shard number `shard`."""
    return spool_root(cfg) / f"shard-{shard}"


#: Map size of the accounts environment (users, API keys, idempotency keys). Every process
#: opening it must use the same size (LMDB), so they all take this one.
ACCOUNTS_MAP_SIZE = 1 << 30


def accounts_dir(cfg: Config) -> Path:
    """The LMDB environment beside the spool that holds users and API keys (all shards)."""
    return cfg.data_path / "accounts"
