"""Parsing the bench commands' option values; every error names the bad value."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Final

from relay.loadgen.sendconfig import target_address
from relay.loadgen.sinkconfig import FAULT_STAGES, CommandFault, Faults

__all__ = ["build_faults", "parse_credentials", "parse_size", "parse_target"]

_SIZE_UNITS: Final = {"k": 1024, "m": 1024 * 1024}
_STAGE_ALIASES: Final = {"eod": "end_of_data", "end-of-data": "end_of_data"}
_KINDS: Final = {"4xx": "temporary", "5xx": "permanent", "delay": "delay"}


def parse_target(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 as ``[::1]:25``) -> (host, port); the host must be an IP
    address or 'localhost' (see `target_address`)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"target {text!r}: expected HOST:PORT, e.g. 127.0.0.1:2525")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    port = int(port_text)
    if not 0 < port <= 65535:
        raise ValueError(f"target {text!r}: port must be 1-65535")
    target_address(host)
    return host, port


def parse_size(text: str) -> int:
    """Bytes from "5120", "5k" or "1m" (binary units)."""
    cleaned = text.strip().lower().removesuffix("b")
    factor = _SIZE_UNITS.get(cleaned[-1:], 1)
    number = cleaned[:-1] if cleaned[-1:] in _SIZE_UNITS else cleaned
    if not number.isdigit():
        raise ValueError(f"size {text!r}: expected bytes, e.g. 5120, 5k or 1m")
    return int(number) * factor


def parse_credentials(text: str) -> tuple[str, str]:
    """``USER:PASSWORD`` -> (user, password); the password may contain colons."""
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise ValueError("credentials: expected USER:PASSWORD")
    return user, password


def build_faults(
    specs: Iterable[str],
    *,
    disconnect_after: int = 0,
    tarpit: float = 0.0,
    seed: int | None = None,
) -> Faults:
    """Faults from specs like ``rcpt:4xx=0.01``, ``mail:5xx=0.5``, ``data:delay=0.2``.

    Stages: mail, rcpt, data, end_of_data (or eod); kinds: 4xx and 5xx
    (probabilities) and delay (seconds).  A later spec for the same stage and kind
    wins.
    """
    stages = {name: CommandFault() for name in FAULT_STAGES}
    for spec in specs:
        target, sep, value_text = spec.partition("=")
        stage, colon, kind = target.strip().lower().partition(":")
        stage = _STAGE_ALIASES.get(stage, stage)
        if not sep or not colon or stage not in stages or kind not in _KINDS:
            raise ValueError(
                f"fault {spec!r}: expected STAGE:KIND=VALUE, STAGE one of "
                f"{', '.join(FAULT_STAGES)}, KIND one of 4xx, 5xx, delay"
            )
        try:
            value = float(value_text)
        except ValueError:
            raise ValueError(f"fault {spec!r}: {value_text!r} is not a number") from None
        try:
            stages[stage] = dataclasses.replace(stages[stage], **{_KINDS[kind]: value})
        except ValueError as exc:
            raise ValueError(f"fault {spec!r}: {exc}") from None
    return Faults(
        mail=stages["mail"],
        rcpt=stages["rcpt"],
        data=stages["data"],
        end_of_data=stages["end_of_data"],
        disconnect_after=disconnect_after,
        tarpit=tarpit,
        seed=seed,
    )
