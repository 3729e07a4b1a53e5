"""A self-signed server certificate for running with no certificate configured.

Generated once into `<data_dir>/tls/` (key mode 0600) and reused on later starts
while it is still valid, names the configured host and matches its key; otherwise
it is replaced.  Generation happens under an exclusive file lock so that several
worker processes starting together end up with one matching pair.
"""

from __future__ import annotations

import datetime
import fcntl
import ipaddress
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from relay.log import get_logger

log = get_logger("net.tls")

CERT_NAME = "self-signed.crt"
KEY_NAME = "self-signed.key"
VALIDITY = datetime.timedelta(days=3650)
RENEW_BEFORE = datetime.timedelta(days=30)


def _subject_alt_name(hostname: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(hostname))
    except ValueError:
        return x509.DNSName(hostname)


def _generate(hostname: str, now: datetime.datetime) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName([_subject_alt_name(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _unusable_reason(
    cert_file: Path, key_file: Path, hostname: str, now: datetime.datetime
) -> str | None:
    """Why the existing pair cannot be reused, or None when it can."""
    if not cert_file.exists() or not key_file.exists():
        return "missing"
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_file, key_file)
    except (OSError, ValueError, ssl.SSLError):
        return "unreadable or key mismatch"
    if cert.not_valid_after_utc - RENEW_BEFORE < now:
        return "expires soon"
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "no subject alternative name"
    if _subject_alt_name(hostname) not in names:
        return "different host name"
    return None


def ensure_self_signed_certificate(data_dir: str | Path, hostname: str) -> tuple[Path, Path]:
    """The (certificate, key) paths of a self-signed certificate for `hostname`.

    Creates `<data_dir>/tls/` and the pair when needed and logs what it did with
    the path.  `hostname` is the name clients connect to (never guessed here).
    """
    if not hostname:
        raise ValueError("a host name is required for the self-signed certificate")
    directory = Path(data_dir) / "tls"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_file, key_file = directory / CERT_NAME, directory / KEY_NAME
    with open(directory / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        now = datetime.datetime.now(datetime.UTC)
        reason = _unusable_reason(cert_file, key_file, hostname, now)
        if reason is None:
            log.info("using self-signed TLS certificate", path=str(cert_file), hostname=hostname)
            return cert_file, key_file
        cert_pem, key_pem = _generate(hostname, now)
        _write_atomically(key_file, key_pem, 0o600)
        _write_atomically(cert_file, cert_pem, 0o644)
    log.warning(
        "generated a self-signed TLS certificate: configure a real one for production",
        path=str(cert_file),
        key_path=str(key_file),
        hostname=hostname,
        because=reason,
    )
    return cert_file, key_file
