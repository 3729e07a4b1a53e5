"""Verification with dkimpy, an implementation independent of relay.dkim."""

from __future__ import annotations

import re

import dkim
from dkim.util import parse_tag_value

from relay.dkim import SigningKey


def dns_records(*keys: SigningKey) -> dict[bytes, bytes]:
    """The TXT records a zone would hold for `keys`, keyed as dkimpy asks for them."""
    return {f"{k.dns_name}.".encode(): k.dns_txt().encode() for k in keys}


def signature_tags(message: bytes) -> list[dict[bytes, bytes]]:
    """The tags of every DKIM-Signature field of `message`, top first."""
    headers, _ = dkim.rfc822_parse(message)
    return [parse_tag_value(v) for name, v in headers if name.lower() == b"dkim-signature"]


def signed_names(tags: dict[bytes, bytes]) -> list[bytes]:
    """The h= list of one signature, lower-cased."""
    return [n.lower() for n in re.split(rb"\s*:\s*", tags[b"h"].strip())]


def verify_each(message: bytes, *keys: SigningKey) -> list[bool]:
    """dkimpy's verdict on each DKIM-Signature of `message` (top first), with a DNS
    stub that publishes the public half of `keys` and nothing else."""
    records = dns_records(*keys)

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return records.get(name)

    count = len(signature_tags(message))
    verifier = dkim.DKIM(message)
    verdicts = []
    for i in range(count):
        try:
            verdicts.append(bool(verifier.verify(idx=i, dnsfunc=dnsfunc)))
        except dkim.DKIMException:
            verdicts.append(False)
    return verdicts
