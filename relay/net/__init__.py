"""trio adapters: the only code in relay that awaits on sockets.

- `tls`: server/client SSL contexts, reloadable certificate store, `start_tls`.
- `selfsigned`: the generated certificate used when none is configured.
- `listen`: listening sockets (SO_REUSEPORT) and the capped accept loop, `Server`.
- `connect`: outbound TCP from an egress source address.
- `dns`: MX and address resolution with dnspython on trio, cached for the TTL.
"""

from relay.net.connect import DEFAULT_CONNECT_TIMEOUT, connect, connect_first
from relay.net.dns import MxHost, MxResolver, MxResult, ResolverStatistics
from relay.net.listen import (
    ConnectionHandler,
    ConnectionLimits,
    Server,
    ServerStatistics,
    SocketAddress,
    listener_address,
    open_listeners,
    socket_address,
)
from relay.net.selfsigned import ensure_self_signed_certificate
from relay.net.tls import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    TlsCertificateStore,
    certificate_store,
    client_context,
    server_context,
    start_tls,
    tls_version_and_cipher,
)

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "ConnectionHandler",
    "ConnectionLimits",
    "MxHost",
    "MxResolver",
    "MxResult",
    "ResolverStatistics",
    "Server",
    "ServerStatistics",
    "SocketAddress",
    "TlsCertificateStore",
    "certificate_store",
    "client_context",
    "connect",
    "connect_first",
    "ensure_self_signed_certificate",
    "listener_address",
    "open_listeners",
    "server_context",
    "socket_address",
    "start_tls",
    "tls_version_and_cipher",
]
