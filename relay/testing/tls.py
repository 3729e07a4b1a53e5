"""TLS fixtures from trustme: a throwaway CA and server certificates written to files."""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import trustme

from relay.model import TlsMode
from relay.net.tls import client_context

SERVER_NAMES = ("127.0.0.1", "localhost", "mx.test")


@dataclass(frozen=True)
class TlsFiles:
    """A CA and a server certificate issued by it, as PEM files."""

    ca: trustme.CA
    ca_file: Path
    cert_file: Path  # the leaf followed by its chain
    key_file: Path

    @property
    def ca_pem(self) -> str:
        """The CA certificate, PEM text (for `client_context(..., cadata=...)`)."""
        return self.ca.cert_pem.bytes().decode("ascii")


def make_ca() -> trustme.CA:
    """A new certificate authority that nothing else trusts."""
    return trustme.CA()


def write_server_certificate(
    ca: trustme.CA,
    directory: str | Path,
    names: Sequence[str] = SERVER_NAMES,
    *,
    stem: str = "server",
) -> tuple[Path, Path]:
    """Issue a certificate for `names` and write `<stem>.crt` (chain) and `<stem>.key`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    leaf = ca.issue_cert(*names)
    cert_file, key_file = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_file.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key_file))
    key_file.chmod(0o600)
    return cert_file, key_file


def make_tls_files(directory: str | Path, names: Sequence[str] = SERVER_NAMES) -> TlsFiles:
    """A new CA and a server certificate for `names`, all written under `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ca = make_ca()
    ca_file = directory / "ca.crt"
    ca.cert_pem.write_to_path(str(ca_file))
    cert_file, key_file = write_server_certificate(ca, directory, names)
    return TlsFiles(ca=ca, ca_file=ca_file, cert_file=cert_file, key_file=key_file)


def trusting_client_context(ca: trustme.CA) -> ssl.SSLContext:
    """A verifying client context (relay's required-verify) that trusts only `ca`."""
    return client_context(TlsMode.REQUIRED_VERIFY, cadata=ca.cert_pem.bytes().decode("ascii"))
