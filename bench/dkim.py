"""Cost of DKIM signing per message, as ingest pays it (one call of the signer).

Signers measured, on realistic messages (a marketing-style header block as ingest
leaves it, Received first, and a quoted-printable-like text body):
  * relay rsa-sha256      relay.dkim.DkimSigner with an RSA-2048 key (OpenSSL)
  * relay ed25519-sha256  the same with an Ed25519 key (RFC 8463)
  * relay rsa+ed25519     both signatures on one message (the body hash is shared)
  * dkimpy rsa-sha256     dkim.sign(), same key, same headers, relaxed/relaxed: the
    library baseline (its RSA arithmetic is pure Python)
  * dkimpy ed25519-sha256 dkim.sign() with PyNaCl
Every relay signature is verified with dkimpy before timing.  Printed per signer:
microseconds per message (median of the rounds) and the messages per second one
core could sign at that cost (signing runs on the shard's event loop).

    .venv/bin/python bench/dkim.py             # 5 KB and 100 KB messages
    .venv/bin/python bench/dkim.py --quick     # 5 KB, fewer messages
"""

from __future__ import annotations

import argparse
import base64
import functools
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# This file is called dkim.py: its own directory must not shadow the dkimpy package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from relay.config import DKIM_DEFAULT_HEADERS  # noqa: E402
from relay.dkim import DkimSigner, SigningKey, generate_private_key  # noqa: E402

HEADER = (
    b"Received: from app1.shop.test ([192.0.2.7])\r\n\tby relay.test (relay) with ESMTPSA"
    b" id 01HQ3J8Z5Q0000000000000000;\r\n\tMon, 01 Jan 2024 00:00:00 GMT\r\n"
    b"Message-ID: <01HQ3J8Z5Q0000000000000000@relay.test>\r\n"
    b"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
    b"From: Shop News <news@shop.test>\r\n"
    b"To: Customer <customer@example.test>\r\n"
    b"Subject: =?utf-8?q?Spring_sale=3A_everything_must_go?=\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"List-Unsubscribe: <https://shop.test/u/8d7f6e>, <mailto:u-8d7f6e@shop.test>\r\n"
    b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
    b"Feedback-ID: spring:shop:relay\r\n"
    b"\r\n"
)
LINE = b"Dear customer, our spring sale starts today =E2=80=94 up to 50% off.    \r\n"


def make_message(size: int) -> bytes:
    body = LINE * max(1, (size - len(HEADER)) // len(LINE))
    return HEADER + body


def time_per_call(fn: Callable[[], object], count: int, rounds: int) -> float:
    """Median seconds per call over `rounds` rounds of `count` calls."""
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(count):
            fn()
        samples.append((time.perf_counter() - start) / count)
    return statistics.median(samples)


def dkimpy_keys(rsa: SigningKey, ed: SigningKey) -> tuple[bytes, bytes]:
    """The keys in the forms dkimpy reads: PKCS#1 PEM, and the base64 Ed25519 seed."""
    from cryptography.hazmat.primitives import serialization

    none = serialization.NoEncryption()
    pem = rsa.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, none
    )
    seed = ed.private_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, none
    )
    return pem, base64.b64encode(seed)


def cases(
    message: bytes,
    signers: dict[str, DkimSigner],
    keys: tuple[SigningKey, SigningKey],
    dkim: Any,
) -> dict[str, Callable[[], object]]:
    """What to time on `message`; with dkimpy, every relay signature is verified first."""
    out: dict[str, Callable[[], object]] = {
        name: functools.partial(signer.sign, message, "bounces@shop.test")
        for name, signer in signers.items()
    }
    if dkim is None:
        return out
    records = {f"{k.dns_name}.".encode(): k.dns_txt().encode() for k in keys}

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return records.get(name)

    for name, signer in signers.items():
        verifier = dkim.DKIM(signer(message, ""))
        for i in range(len(signer.keys_for("shop.test"))):
            assert verifier.verify(idx=i, dnsfunc=dnsfunc), f"{name}: signature {i} is bad"
    include = [h.lower().encode() for h in DKIM_DEFAULT_HEADERS] + [b"from"]
    rsa_pem, ed_seed = dkimpy_keys(*keys)
    relaxed = (b"relaxed", b"relaxed")
    out["dkimpy rsa-sha256"] = functools.partial(
        dkim.sign, message, b"r1", b"shop.test", rsa_pem,
        canonicalize=relaxed, include_headers=include,
    )  # fmt: skip
    out["dkimpy ed25519-sha256"] = functools.partial(
        dkim.sign, message, b"e1", b"shop.test", ed_seed, signature_algorithm=b"ed25519-sha256",
        canonicalize=relaxed, include_headers=include,
    )  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 KB only, fewer messages")
    parser.add_argument("--messages", type=int, default=0, help="messages per round")
    parser.add_argument("--rounds", type=int, default=0)
    parser.add_argument("--no-dkimpy", action="store_true", help="skip the dkimpy baseline")
    args = parser.parse_args()
    sizes = [5 * 1024] if args.quick else [5 * 1024, 100 * 1024]
    count = args.messages or (100 if args.quick else 300)
    rounds = args.rounds or (3 if args.quick else 5)
    dkim: Any = None
    if not args.no_dkimpy:
        try:
            import dkim
        except ImportError:
            dkim = None

    rsa = SigningKey("shop.test", "r1", "rsa-sha256", generate_private_key("rsa-sha256", 2048))
    ed = SigningKey("shop.test", "e1", "ed25519-sha256", generate_private_key("ed25519-sha256"))
    signers = {
        "relay rsa-sha256": DkimSigner({"shop.test": (rsa,)}, headers=DKIM_DEFAULT_HEADERS),
        "relay ed25519-sha256": DkimSigner({"shop.test": (ed,)}, headers=DKIM_DEFAULT_HEADERS),
        "relay rsa+ed25519": DkimSigner({"shop.test": (rsa, ed)}, headers=DKIM_DEFAULT_HEADERS),
    }
    print(
        f"python {platform.python_version()} on {platform.machine()}; "
        f"{count} messages x {rounds} rounds; dkimpy {'on' if dkim else 'off'}"
    )
    print(f"headers: {len(DKIM_DEFAULT_HEADERS)} listed, From oversigned; c=relaxed/relaxed")
    print(f"{'size':>8}  {'signer':<24} {'us/message':>11} {'messages/s':>11}")
    for size in sizes:
        for name, fn in cases(make_message(size), signers, (rsa, ed), dkim).items():
            # dkimpy's RSA is about 20 times slower: fewer calls keep the run short.
            n = max(5, count // 20) if name == "dkimpy rsa-sha256" else count
            seconds = time_per_call(fn, n, rounds)
            print(f"{size:>8}  {name:<24} {seconds * 1e6:>11.0f} {1 / seconds:>11.0f}")


if __name__ == "__main__":
    main()
