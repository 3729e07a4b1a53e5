"""TLS for relay: server and client contexts, certificate reload, handshakes.

Theory of operation: an `ssl.SSLContext` is fixed once a connection has been
wrapped with it, so a certificate is "reloaded" by building a new context and
swapping the reference that *new* connections read (`TlsCertificateStore.context`).
Connections already established keep the SSLObject made from the old context
and are not disturbed.  The swap is a single attribute assignment, so it is safe
from a signal handler task.

Handshakes always run under a deadline (`start_tls`) and any failure - protocol
error, verification failure, peer gone, timeout - is reported as one exception,
`TlsHandshakeError`, after the connection has been closed.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import trio

from relay.errors import ConfigError, TlsHandshakeError
from relay.log import get_logger
from relay.model import TlsMode
from relay.net.selfsigned import ensure_self_signed_certificate

log = get_logger("net.tls")

# TLS 1.2 suites with forward secrecy and AEAD only (Mozilla "intermediate" list).
# TLS 1.3 suites are not configurable through set_ciphers and are all acceptable.
TLS12_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    )
)

DEFAULT_HANDSHAKE_TIMEOUT = 30.0


def _harden(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return context


def server_context(cert_file: str | Path, key_file: str | Path) -> ssl.SSLContext:
    """A server context (TLS 1.2 minimum, forward-secret AEAD ciphers) for a cert+key pair.

    `cert_file` may hold the full chain.  Raises ConfigError naming the files when
    they cannot be read or do not match.
    """
    context = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        context.load_cert_chain(str(cert_file), str(key_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load TLS certificate {cert_file} with key {key_file}: {exc}"
        ) from exc
    return context


class TlsCertificateStore:
    """The server certificate in use, reloadable without touching live connections.

    Listeners read `context` for every new connection; `reload()` (called by the
    application on SIGHUP) re-reads the files and swaps the context.
    """

    def __init__(self, cert_file: str | Path, key_file: str | Path) -> None:
        self.cert_file = Path(cert_file)
        self.key_file = Path(key_file)
        self._context = server_context(self.cert_file, self.key_file)
        self.generation = 1  # incremented on every successful reload

    @property
    def context(self) -> ssl.SSLContext:
        """The context new connections use."""
        return self._context

    def reload(self) -> None:
        """Re-read the certificate and key; on failure keep the current ones and raise ConfigError."""
        context = server_context(self.cert_file, self.key_file)
        self._context = context
        self.generation += 1
        log.info(
            "tls certificate reloaded", cert_file=str(self.cert_file), generation=self.generation
        )


def certificate_store(
    cert_file: str | Path | None,
    key_file: str | Path | None,
    *,
    data_dir: str | Path,
    hostname: str,
) -> TlsCertificateStore:
    """The store for the configured pair, or for a self-signed certificate when none is.

    With neither file configured, a certificate for `hostname` is generated into
    `data_dir` at first start and reused afterwards (see relay.net.selfsigned).
    """
    if (cert_file is None) != (key_file is None):
        raise ConfigError("TLS: configure both the certificate and the key file, or neither")
    if cert_file is None or key_file is None:
        cert_file, key_file = ensure_self_signed_certificate(data_dir, hostname)
    return TlsCertificateStore(cert_file, key_file)


def client_context(
    mode: TlsMode,
    *,
    cafile: str | Path | None = None,
    cadata: str | bytes | None = None,
) -> ssl.SSLContext:
    """A context for outbound STARTTLS in the given mode.

    OPPORTUNISTIC and REQUIRED encrypt without checking the certificate (RFC 7435:
    opportunistic security beats cleartext); what differs is what delivery does when
    the handshake fails.  REQUIRED_VERIFY checks the chain against `cafile`/`cadata`
    (or the system store when neither is given) and the host name passed as
    `server_hostname` to `start_tls`.  Contexts are costly to build: make one per
    mode and reuse it.
    """
    if mode is TlsMode.DISABLED:
        raise ValueError("no TLS context for TlsMode.DISABLED")
    context = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    if mode is TlsMode.REQUIRED_VERIFY:
        if cafile is None and cadata is None:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        else:  # only the configured authorities are trusted
            context.load_verify_locations(
                cafile=None if cafile is None else str(cafile), cadata=cadata
            )
        context.check_hostname = True
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _describe_failure(exc: BaseException) -> str:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"certificate verification failed: {cause.verify_message}"
        if isinstance(cause, ssl.SSLError):
            return f"TLS error: {cause.reason or cause}"
        cause = cause.__cause__ or cause.__context__
    return "connection closed during the TLS handshake"


async def start_tls(
    stream: trio.abc.Stream,
    context: ssl.SSLContext,
    *,
    server_side: bool,
    server_hostname: str | None = None,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
) -> trio.SSLStream[trio.abc.Stream]:
    """Wrap `stream` in TLS and complete the handshake within `handshake_timeout` seconds.

    Used for STARTTLS (RFC 3207) on either side and for implicit TLS (RFC 8314).
    The caller must have discarded any plaintext it buffered after the STARTTLS
    command (RFC 3207 section 6).  On failure the stream is closed and
    TlsHandshakeError raised.  Ragged EOFs read as EOF: SMTP frames its own data,
    and many peers close without close_notify after QUIT.
    """
    ssl_stream = trio.SSLStream(
        stream,
        context,
        server_side=server_side,
        server_hostname=server_hostname,
        https_compatible=True,
    )
    try:
        with trio.fail_after(handshake_timeout):
            await ssl_stream.do_handshake()
    except trio.TooSlowError:
        await trio.aclose_forcefully(ssl_stream)
        raise TlsHandshakeError(
            f"TLS handshake timed out after {handshake_timeout:g}s", timed_out=True
        ) from None
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        await trio.aclose_forcefully(ssl_stream)
        raise TlsHandshakeError(_describe_failure(exc)) from exc
    return ssl_stream


def tls_version_and_cipher(stream: trio.SSLStream[trio.abc.Stream]) -> tuple[str, str]:
    """The protocol version and cipher suite of an established TLS stream.

    For the Received header (RFC 3848 with the customary comment), e.g.
    ("TLSv1.3", "TLS_AES_256_GCM_SHA384").
    """
    version: str | None = stream.version()
    cipher: tuple[str, str, int] | None = stream.cipher()
    return (version or "unknown", cipher[0] if cipher else "unknown")
