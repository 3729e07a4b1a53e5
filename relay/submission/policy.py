"""Who may send what: relay permission, sender domains, per-user limits (pure).

Nothing here does I/O or keeps time; the session asks and sends the reply.  A
`Refusal` is the SMTP reply to give; its text never carries data from the client
or an exception, so nothing a client sends is reflected back.

The rules:

- Submission ports relay only for authenticated users (the protocol layer answers
  530 5.7.0 before that); the port-25 listener relays only for clients inside the
  trusted networks and refuses everybody else with 554 5.7.1 — never an open relay.
- An authenticated user may use only its sender domains, in MAIL FROM (553 5.7.1)
  and in every address of the header From (550 5.7.1), so one customer cannot
  send as another.  A message has exactly one From field (RFC 5322 3.6).
- A user's own limits (recipients, size) apply below the server's, never above.
"""

from __future__ import annotations

import email.utils
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from relay.errors import ConfigError
from relay.ingest import header_values
from relay.model import domain_of
from relay.submission.users import User


@dataclass(frozen=True, slots=True)
class Refusal:
    """An SMTP reply refusing a command."""

    code: int
    enhanced: str
    text: str


RELAY_DENIED = Refusal(554, "5.7.1", "Relay access denied")
SENDER_NOT_ALLOWED = Refusal(553, "5.7.1", "Sender address not allowed for this user")
NULL_SENDER_NOT_ALLOWED = Refusal(553, "5.7.1", "Null sender not allowed for this user")
FROM_NOT_ALLOWED = Refusal(550, "5.7.1", "Header From domain not allowed for this user")
ONE_FROM_REQUIRED = Refusal(550, "5.6.0", "Message must have exactly one From header field")
RECIPIENT_NOT_QUALIFIED = Refusal(550, "5.1.3", "Recipient address must include a domain")
TOO_MANY_RECIPIENTS = Refusal(452, "4.5.3", "Too many recipients")  # RFC 5321 4.5.3.1.10
BAD_TENANT = Refusal(550, "5.6.0", "Invalid tenant header")
BAD_CAMPAIGN = Refusal(550, "5.6.0", "Invalid campaign header")
BAD_HELO = Refusal(501, "5.5.4", "Invalid EHLO/HELO name")

# A tenant is a name used in paths, metrics and queue keys; a campaign a free label.
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_CAMPAIGN_MAX = 128


class TrustedNetworks:
    """The client networks allowed to relay without AUTH (CIDRs, IPv4 and IPv6)."""

    def __init__(self, cidrs: Iterable[str]) -> None:
        networks = []
        for cidr in cidrs:
            try:
                networks.append(ipaddress.ip_network(cidr, strict=False))
            except ValueError:
                raise ConfigError(f"trusted network {cidr!r} is not a CIDR network") from None
        self.networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = tuple(networks)

    def __contains__(self, host: object) -> bool:
        if not isinstance(host, str):
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.networks)


def check_helo(name: str) -> Refusal | None:
    """EHLO/HELO: a domain or address literal (RFC 5321 4.1.1.1); names are not
    checked against DNS, but control characters are refused (they would be echoed
    in the reply and written into the Received header)."""
    return None if name.isprintable() else BAD_HELO


def effective_limit(user_limit: int, server_limit: int) -> int:
    """A user's limit (0: none of its own) never exceeds the server's."""
    return min(user_limit, server_limit) if user_limit > 0 else server_limit


def check_sender(user: User, sender: str) -> Refusal | None:
    """MAIL FROM: the domain must be one of the user's sender domains."""
    if not sender:
        return NULL_SENDER_NOT_ALLOWED
    domain = domain_of(sender)
    if not domain or not user.may_send_from(domain):
        return SENDER_NOT_ALLOWED
    return None


def check_header_from(user: User | None, content: bytes) -> Refusal | None:
    """Exactly one From field, and (for a user) every address in it from its domains."""
    values = header_values(content, "From")
    if len(values) != 1:
        return ONE_FROM_REQUIRED
    if user is None:
        return None
    addresses = email.utils.getaddresses(values)
    if not addresses:
        return FROM_NOT_ALLOWED
    for _name, address in addresses:
        domain = domain_of(address)
        # An entry with no address is what the parser leaves of input it could not
        # read: refuse it rather than guess what a mail reader would display.
        if not domain or not user.may_send_from(domain):
            return FROM_NOT_ALLOWED
    return None


def check_recipient(recipient: str, accepted: int, limit: int) -> Refusal | None:
    """RCPT TO: a domain is required (a relay has no local mailboxes); at most
    `limit` recipients per message."""
    if not domain_of(recipient):
        return RECIPIENT_NOT_QUALIFIED
    if accepted >= limit:
        return TOO_MANY_RECIPIENTS
    return None


def tenant_from_header(value: str | None) -> str | Refusal | None:
    """The tenant named by the control header, None if absent, or a Refusal."""
    if value is None:
        return None
    value = value.strip()
    if not _TENANT.fullmatch(value):
        return BAD_TENANT
    return value


def campaign_from_header(value: str | None) -> str | Refusal:
    """The campaign label of the control header ("" if absent), or a Refusal."""
    if value is None:
        return ""
    value = value.strip()
    if len(value) > _CAMPAIGN_MAX or not value.isprintable():
        return BAD_CAMPAIGN
    return value


def trace_protocol(*, esmtp: bool, tls: bool, authenticated: bool) -> str:
    """The Received "with" keyword (RFC 3848): ESMTP, ESMTPS, ESMTPA, ESMTPSA; SMTP
    after HELO."""
    if not esmtp:
        return "SMTP"
    return "ESMTP" + ("S" if tls else "") + ("A" if authenticated else "")
