"""DKIM signing at ingest: RSA-SHA256 (RFC 6376, RFC 8301) and Ed25519-SHA256 (RFC 8463).

Theory of operation: `DkimSigner` is the `signer` callable that `Ingest` runs on
the prepared message (its Received, Message-ID and Date headers already added).  It
picks the signing domain, the header From domain or else the envelope sender's,
looks up that domain's keys (at most one per algorithm, so at most an RSA and an
Ed25519 signature) and prepends one DKIM-Signature field per key.

Signatures are computed here rather than by dkimpy's `sign()`: dkimpy does the RSA
private-key operation in pure Python (about 10 ms per message for RSA-2048, see
bench/dkim.py), while OpenSSL through `cryptography` takes a fraction of a
millisecond.  The DKIM part is small and fully specified: relaxed/relaxed
canonicalisation (RFC 6376 3.4.2, 3.4.4), the body hash (3.7), header selection
from the bottom up with oversigning (5.4.2) and the signature over the header hash
(3.7; Ed25519 signs the SHA-256 digest, RFC 8463 3).  The tests verify every
signature with dkimpy's verifier, an independent implementation.

The hash is computed over the message in network form: bare CR and bare LF are
hashed as CRLF, since that is how delivery puts them on the wire.  The body hash is
computed once and shared by both signatures.  The Received trace header is never
in the signed list (RFC 6376 5.4.1): later hops add their own above it.

Keys are PEM private keys, loaded once at start and again on `reload()` (SIGHUP):
from `[[dkim.keys]]` entries, or from `dkim.key_dir` in either layout

    <key_dir>/<domain>/<selector>.<rsa|ed25519>.pem
    <key_dir>/<selector>._domainkey.<domain>.<rsa|ed25519>.pem

(the flat one suits a Kubernetes Secret mounted as a directory).  Names starting
with "." are skipped: they are the Secret volume's own bookkeeping.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from relay.config import Config, DkimConfig
from relay.errors import ConfigError
from relay.log import get_logger

log = get_logger("dkim")

Algorithm = Literal["rsa-sha256", "ed25519-sha256"]
PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
KeyTable = Mapping[str, tuple["SigningKey", ...]]

# File-name suffix of each algorithm in a key directory, and back.
SUFFIXES: dict[Algorithm, str] = {"rsa-sha256": "rsa", "ed25519-sha256": "ed25519"}
_BY_SUFFIX: dict[str, Algorithm] = {v: k for k, v in SUFFIXES.items()}
# Signature order in the message, top first: RSA is what every verifier knows.
_ORDER: dict[str, int] = {"rsa-sha256": 0, "ed25519-sha256": 1}

MIN_RSA_BITS = 1024  # RFC 8301 3.2: signers MUST use at least 1024 bits
MAX_RSA_BITS = 4096  # RFC 8301 3.2: verifiers must handle up to 4096 bits
_FOLD_AT = 76
LAYOUT = "<domain>/<selector>.<rsa|ed25519>.pem or <selector>._domainkey.<domain>.<rsa|ed25519>.pem"

_LINE_ENDING = re.compile(rb"\r\n|\r|\n")
_FIELD = re.compile(rb"^([!-9;-~]+)[ \t]*:([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)", re.MULTILINE)
_FOLD = re.compile(rb"\r\n(?=[ \t])")
_FROM_FIELD = re.compile(rb"^from[ \t]*:([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)", re.M | re.I)
_HEADER_END = re.compile(rb"\r\n\r\n")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_SELECTOR = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
_FLAT_NAME = re.compile(r"^(?P<selector>[^/]+)\._domainkey\.(?P<domain>[^/]+)$")


# --- canonicalisation (RFC 6376 3.4) --------------------------------------------------


def network_form(content: bytes) -> bytes:
    """`content` with every bare CR and bare LF turned into CRLF (as sent on the wire)."""
    crlf = content.count(b"\r\n")
    if content.count(b"\n") == crlf and content.count(b"\r") == crlf:
        return content
    return _LINE_ENDING.sub(b"\r\n", content)


def _collapse_wsp(data: bytes) -> bytes:
    """Every run of spaces and tabs as one space (bytes.replace: C speed, no regex)."""
    if b"\t" in data:
        data = data.replace(b"\t", b" ")
    while b"  " in data:
        data = data.replace(b"  ", b" ")
    return data


def relaxed_body(body: bytes) -> bytes:
    """The "relaxed" body canonicalisation of RFC 6376 3.4.4 (input in network form)."""
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    body = _collapse_wsp(body)
    if b" \r\n" in body:  # after the collapse, trailing whitespace is one space
        body = body.replace(b" \r\n", b"\r\n")
    if body.endswith(b"\r\n\r\n") or body == b"\r\n":
        body = body.rstrip(b"\r\n")
        return body + b"\r\n" if body else b""
    return body


def relaxed_header(name: bytes, value: bytes) -> bytes:
    """The "relaxed" canonical form of one header field, RFC 6376 3.4.2 (with CRLF);
    `value` is in network form, so each of its CRLFs is a fold."""
    if b"\r\n" in value:
        value = value.replace(b"\r\n", b"")
    value = _collapse_wsp(value).strip(b" ")
    return name.lower() + b":" + value + b"\r\n"


def split_message(content: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """(header fields as (lower-case name, canonical field), body) of a message in
    network form; lines of the header section that are not fields are ignored."""
    m = _HEADER_END.search(content)
    if content.startswith(b"\r\n"):
        head, body = b"", content[2:]
    elif m is None:
        head, body = content, b""
    else:
        head, body = content[: m.start() + 2], content[m.end() :]
    fields = [
        (f.group(1).lower(), relaxed_header(f.group(1), f.group(2))) for f in _FIELD.finditer(head)
    ]
    return fields, body


# --- keys -----------------------------------------------------------------------------


def ascii_domain(domain: str) -> str:
    """A domain as DKIM names it: lower case, no trailing dot, IDNA A-labels."""
    domain = domain.strip().rstrip(".").lower()
    if domain.isascii():
        return domain
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain


_DOMAIN = re.compile(rf"^(?:{_LABEL}\.)+{_LABEL}$")


def check_domain(domain: str) -> str:
    """`domain` as `ascii_domain` gives it; ValueError if it is not a domain name."""
    name = ascii_domain(domain)
    if not _DOMAIN.match(name):
        raise ValueError(f"{domain!r} is not a domain name")
    return name


def check_selector(selector: str) -> str:
    """`selector`; ValueError unless it is dot-separated labels (RFC 6376 3.1)."""
    if not _SELECTOR.match(selector):
        raise ValueError(f"{selector!r} is not a selector (labels of letters, digits and hyphens)")
    return selector


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One private key: it signs mail of `domain` as d=`domain`, s=`selector`."""

    domain: str
    selector: str
    algorithm: Algorithm
    private_key: PrivateKey
    path: str = ""

    @property
    def dns_name(self) -> str:
        """Where the public key is published (RFC 6376 3.6.2.1)."""
        return f"{self.selector}._domainkey.{self.domain}"

    def dns_txt(self) -> str:
        """The TXT record value to publish (RFC 6376 3.6.1; RFC 8463 4.2 for Ed25519)."""
        return dns_txt_value(self.private_key)

    def sign_digest(self, digest: bytes) -> bytes:
        """The signature of a SHA-256 header hash (RSASSA-PKCS1-v1_5, or PureEdDSA)."""
        if isinstance(self.private_key, rsa.RSAPrivateKey):
            return self.private_key.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
        return self.private_key.sign(digest)


def dns_txt_value(private_key: PrivateKey) -> str:
    """The "v=DKIM1; k=...; p=..." value carrying the public half of `private_key`."""
    public = private_key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        der = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"


def dns_zone_record(selector: str, domain: str, value: str) -> str:
    """A zone-file line for the TXT record; long values become several strings of at
    most 255 octets each (RFC 1035 3.3.14), which verifiers concatenate."""
    chunks = [value[i : i + 255] for i in range(0, len(value), 255)]
    strings = " ".join(f'"{c}"' for c in chunks)
    return f"{selector}._domainkey.{ascii_domain(domain)}. IN TXT ( {strings} )"


def generate_private_key(algorithm: Algorithm, bits: int = 2048) -> PrivateKey:
    """A new private key; RSA sizes from 1024 to 4096 bits (RFC 8301 3.2)."""
    if algorithm == "ed25519-sha256":
        return ed25519.Ed25519PrivateKey.generate()
    if not MIN_RSA_BITS <= bits <= MAX_RSA_BITS:
        raise ValueError(f"RSA keys have {MIN_RSA_BITS} to {MAX_RSA_BITS} bits, not {bits}")
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def private_key_pem(private_key: PrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM."""
    return private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def key_path(
    key_dir: str | os.PathLike[str], domain: str, selector: str, algorithm: Algorithm
) -> Path:
    """Where a key lives in the nested key-directory layout."""
    return Path(key_dir) / ascii_domain(domain) / f"{selector}.{SUFFIXES[algorithm]}.pem"


def write_private_key(path: Path, private_key: PrivateKey) -> None:
    """Write a new key file readable by its owner only; refuses to overwrite one."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_key_pem(private_key))


def read_private_key(path: Path, algorithm: Algorithm) -> PrivateKey:
    """The key in a PEM file; ValueError saying what is wrong with it."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read it: {exc.strerror or exc}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError("expected an unencrypted PEM private key") from None
    if algorithm == "rsa-sha256":
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("expected an RSA private key for rsa-sha256")
        if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
            raise ValueError(
                f"RSA key of {key.key_size} bits; RFC 8301 3.2 asks for 1024 to 4096 bits"
            )
        return key
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError("expected an Ed25519 private key for ed25519-sha256")
    return key


def _scan_key_dir(key_dir: Path, where: str) -> list[SigningKey]:
    """Every key file in either layout of `key_dir` (see the module docstring)."""

    def load(path: Path, domain: str, selector: str, suffix: str) -> SigningKey:
        try:
            name = check_domain(domain)
            check_selector(selector)
            private_key = read_private_key(path, _BY_SUFFIX[suffix])
        except ValueError as exc:
            raise ConfigError(f"{where}: dkim.key_dir: {path}: {exc}") from None
        return SigningKey(name, selector, _BY_SUFFIX[suffix], private_key, str(path))

    def key_file(path: Path) -> tuple[str, str] | None:
        """(selector or flat name, algorithm suffix) of a key file's name, else None."""
        if path.name.startswith(".") or not path.name.endswith(".pem"):
            return None
        base, _, suffix = path.name.removesuffix(".pem").rpartition(".")
        if suffix in _BY_SUFFIX and base:
            return base, suffix
        log.warning("dkim_key_file_ignored", path=str(path), expected=LAYOUT)
        return None

    keys: list[SigningKey] = []
    try:
        entries = sorted(key_dir.iterdir())
    except OSError as exc:
        raise ConfigError(f"{where}: dkim.key_dir: {key_dir}: {exc.strerror or exc}") from None
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            for path in sorted(entry.iterdir()):
                parsed = key_file(path)
                if parsed is not None and path.is_file():
                    keys.append(load(path, entry.name, parsed[0], parsed[1]))
        elif (parsed := key_file(entry)) is not None:
            flat = _FLAT_NAME.match(parsed[0])
            if flat is not None:
                keys.append(load(entry, flat["domain"], flat["selector"], parsed[1]))
            else:
                log.warning("dkim_key_file_ignored", path=str(entry), expected=LAYOUT)
    return keys


def load_keys(cfg: DkimConfig, where: str) -> dict[str, tuple[SigningKey, ...]]:
    """Domain -> its keys (RSA first).  A domain named by any `[[dkim.keys]]` entry
    takes its keys from those entries only; the others come from `key_dir`.
    ConfigError, naming the key and the file, for a key that cannot be used."""
    explicit: dict[str, list[SigningKey]] = {}
    for i, entry in enumerate(cfg.keys):
        try:
            private_key = read_private_key(Path(entry.key_file), entry.algorithm)
        except ValueError as exc:
            raise ConfigError(
                f"{where}: dkim.keys[{i}].key_file: {entry.key_file}: {exc}"
            ) from None
        domain = ascii_domain(entry.domain)
        key = SigningKey(domain, entry.selector, entry.algorithm, private_key, entry.key_file)
        explicit.setdefault(domain, []).append(key)
    table: dict[str, list[SigningKey]] = {}
    if cfg.key_dir:
        for key in _scan_key_dir(Path(cfg.key_dir), where):
            if key.domain not in explicit:
                table.setdefault(key.domain, []).append(key)
    table.update(explicit)
    out: dict[str, tuple[SigningKey, ...]] = {}
    for domain, keys in table.items():
        seen: dict[str, SigningKey] = {}
        for key in keys:
            if key.algorithm in seen:
                setting = "dkim.key_dir" if domain not in explicit else "dkim.keys"
                raise ConfigError(
                    f"{where}: {setting}: two {key.algorithm} keys for {domain} "
                    f"({seen[key.algorithm].path}, {key.path}): keep one per algorithm"
                )
            seen[key.algorithm] = key
        out[domain] = tuple(sorted(keys, key=lambda k: _ORDER[k.algorithm]))
    return out


# --- signing --------------------------------------------------------------------------


@dataclass(slots=True)
class DkimStatistics:
    """Counters since start."""

    signed: int = 0  # messages that got at least one signature
    unsigned: int = 0  # messages whose domain has no key
    signatures: int = 0  # DKIM-Signature fields added


def _fold(tokens: Sequence[tuple[str, str]]) -> str:
    """`DKIM-Signature:` and the tokens, each after its joiner (" " or ""), folded
    with CRLF TAB before a token that would pass column 76."""
    lines: list[str] = []
    line = "DKIM-Signature:"
    for joiner, token in tokens:
        if len(line) + len(joiner) + len(token) > _FOLD_AT and line.strip() != "DKIM-Signature:":
            lines.append(line)
            line = "\t" + token
        else:
            line += joiner + token
    lines.append(line)
    return "\r\n".join(lines)


def _fold_b64(start: str, value: str) -> str:
    """`value` (base64) appended to the header text `start`, folded at column 76."""
    room = max(_FOLD_AT - len(start) + start.rfind("\n") + 1, 0)
    parts = [start + value[:room]]
    parts += ["\t" + value[i : i + _FOLD_AT - 8] for i in range(room, len(value), _FOLD_AT - 8)]
    return "\r\n".join(parts)


class DkimSigner:
    """Adds DKIM-Signature fields to messages whose signing domain has keys.

    `headers`: the field names signed when present; `oversign`: names listed once
    more than they occur, so a field cannot be added in transit (RFC 6376 5.4.2).
    `loader` (re)reads the key table for `reload()`.
    """

    def __init__(
        self,
        keys: KeyTable,
        *,
        headers: Sequence[str],
        oversign: Sequence[str] = ("From",),
        loader: Callable[[], KeyTable] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = dict(keys)
        self._headers = frozenset(h.lower().encode("ascii") for h in headers)
        self._oversign = tuple(dict.fromkeys(h.lower().encode("ascii") for h in oversign))
        self._loader = loader
        self._clock = clock
        self.statistics = DkimStatistics()

    @property
    def domains(self) -> list[str]:
        """The domains that have keys."""
        return sorted(self._keys)

    def keys_for(self, domain: str) -> tuple[SigningKey, ...]:
        """The keys that sign mail of `domain` (empty when it has none)."""
        return self._keys.get(ascii_domain(domain), ())

    def reload(self) -> None:
        """Read the keys again (SIGHUP); on ConfigError the current keys stay."""
        if self._loader is not None:
            self._keys = dict(self._loader())

    def signing_domain(self, content: bytes, sender: str) -> str:
        """The header From domain when it has keys, else the envelope sender's domain
        when that has keys, else "" (the message goes unsigned)."""
        return self._signing_domain(network_form(content), sender)

    def _signing_domain(self, content: bytes, sender: str) -> str:
        for domain in (_from_domain(content), _address_domain(sender)):
            if domain and ascii_domain(domain) in self._keys:
                return ascii_domain(domain)
        return ""

    def signature_fields(self, content: bytes, sender: str) -> list[bytes]:
        """The DKIM-Signature fields (with CRLF) for `content`, topmost first."""
        content = network_form(content)
        domain = self._signing_domain(content, sender)
        if not domain:
            return []
        fields, body = split_message(content)
        body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest()).decode()
        signed = self._signed_names(fields)
        signed_data = _selected_fields(fields, signed)
        h_tokens = [("", name.decode() + ":") for name in signed]
        h_tokens[0] = (" ", "h=" + h_tokens[0][1])
        h_tokens[-1] = (h_tokens[-1][0], h_tokens[-1][1][:-1] + ";")
        timestamp = int(self._clock())
        out = []
        for key in self._keys[domain]:
            tokens = [
                (" ", "v=1;"),
                (" ", f"a={key.algorithm};"),
                (" ", "c=relaxed/relaxed;"),
                (" ", f"d={domain};"),
                (" ", f"s={key.selector};"),
                (" ", f"t={timestamp};"),
                *h_tokens,
                (" ", f"bh={body_hash};"),
                (" ", "b="),
            ]
            unsigned = _fold(tokens)
            _, _, value = unsigned.partition(":")
            # RFC 6376 3.7: the signature field itself, b= empty, canonicalised, no CRLF.
            own = relaxed_header(b"dkim-signature", value.encode("ascii"))[:-2]
            digest = hashlib.sha256(signed_data + own).digest()
            signature = base64.b64encode(key.sign_digest(digest)).decode()
            out.append((_fold_b64(unsigned, signature) + "\r\n").encode("ascii"))
        return out

    def sign(self, content: bytes, sender: str) -> bytes:
        """`content` with its DKIM-Signature fields prepended (unchanged when unsigned)."""
        fields = self.signature_fields(content, sender)
        stats = self.statistics
        if not fields:
            stats.unsigned += 1
            return content
        stats.signed += 1
        stats.signatures += len(fields)
        return b"".join((*fields, content))

    __call__ = sign

    def _signed_names(self, fields: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
        """The h= list: each configured field present, once per occurrence, in message
        order; then each oversigned name once more.  From is always in it: RFC 6376
        5.4 requires it even when the message has none."""
        names = [name for name, _ in fields if name in self._headers]
        names += self._oversign
        return names if b"from" in names else [*names, b"from"]


def _selected_fields(fields: Sequence[tuple[bytes, bytes]], names: Sequence[bytes]) -> bytes:
    """The canonical fields `names` selects, each name taking its occurrences from the
    bottom up; a name with no occurrence left contributes nothing (RFC 6376 5.4.2)."""
    stacks: dict[bytes, list[bytes]] = {}
    for name, canonical in fields:
        stacks.setdefault(name, []).append(canonical)
    out = []
    for name in names:
        stack = stacks.get(name)
        if stack:
            out.append(stack.pop())
    return b"".join(out)


def _address_domain(address: str) -> str:
    at = address.rfind("@")
    return address[at + 1 :].strip().strip(">") if at >= 0 else ""


def _from_domain(content: bytes) -> str:
    """The domain of the first address in the header From field ("" if none); the
    message is in network form."""
    m = _HEADER_END.search(content)
    head = content[: m.start() + 2] if m else content
    found = _FROM_FIELD.search(head)
    if found is None:
        return ""
    value = _FOLD.sub(b"", found.group(1)).decode("utf-8", "replace")
    for _, address in email.utils.getaddresses([value]):
        if "@" in address:
            return _address_domain(address)
    return ""


def build_signer(cfg: Config) -> DkimSigner | None:
    """The signer for `cfg`, keys loaded (ConfigError if one cannot be used); None
    when DKIM is not configured (no key directory and no key entries)."""
    dkim = cfg.dkim
    if not dkim.key_dir and not dkim.keys:
        return None

    def loader() -> KeyTable:
        return load_keys(dkim, cfg.source)

    keys = loader()
    log.info(
        "dkim_keys_loaded",
        domains=len(keys),
        keys=sum(len(k) for k in keys.values()),
        key_dir=dkim.key_dir,
    )
    return DkimSigner(keys, headers=dkim.headers, oversign=dkim.oversign, loader=loader)
