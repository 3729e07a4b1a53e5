"""One outbound SMTP connection: a trio stream driven by the sans-IO ClientConnection.

`SmtpChannel.event(timeout)` writes whatever the client has queued, then reads until
the client has an event; every way the conversation can break down (a timeout, a
reset, the peer closing, a reply that breaks the protocol) comes out as one
exception, `ChannelBroken`, carrying the transient reply recorded for the
recipients that were in flight.
"""

from __future__ import annotations

import ssl

import trio

from relay.errors import RemoteProtocolError, TlsHandshakeError
from relay.net.tls import start_tls
from relay.proto import NEED_DATA, ClientConnection, ClientEvent

#: Bytes asked of the stream per read.
RECEIVE_SIZE = 65536
#: How long QUIT waits for its reply and for the server to close.
QUIT_TIMEOUT = 5.0


class ChannelBroken(Exception):
    """The connection is unusable; `reply` (4xx) is what the recipients in flight get."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


class SmtpChannel:
    """A connected SMTP client session (see the module docstring).

    `label` names the peer for logs and attempt records, e.g. ``mx.example[192.0.2.1]:25``.
    """

    def __init__(
        self, stream: trio.abc.Stream, conn: ClientConnection, *, label: str, host: str
    ) -> None:
        self.stream = stream
        self.conn = conn
        self.label = label
        self.host = host
        self.transactions = 0  # transactions started on this connection
        self._broken = False

    @property
    def usable(self) -> bool:
        """True while more commands may be sent."""
        return not self._broken and not self.conn.closed

    async def flush(self) -> None:
        """Write what the client has queued."""
        out = self.conn.data_to_send()
        if out:
            await self.stream.send_all(out)

    async def event(self, timeout: float) -> ClientEvent:
        """The client's next event, writing and reading as needed within `timeout` seconds."""
        conn = self.conn
        try:
            with trio.fail_after(timeout):
                while True:
                    event = conn.next_event()
                    if event is not NEED_DATA:
                        return event
                    await self.flush()
                    conn.receive_data(bytes(await self.stream.receive_some(RECEIVE_SIZE)))
        except trio.TooSlowError:
            self._broken = True
            raise ChannelBroken(
                f"451 4.4.2 Timed out after {timeout:g}s waiting for {self.label}"
            ) from None
        except RemoteProtocolError as exc:
            self._broken = True
            code = exc.code if 400 <= exc.code < 500 else 451
            raise ChannelBroken(f"{code} {exc.enhanced or '4.4.2'} {exc.text}") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._broken = True
            reason = str(exc) or type(exc).__name__
            raise ChannelBroken(f"451 4.4.2 Connection to {self.label} lost: {reason}") from None

    async def start_tls(
        self, context: ssl.SSLContext, *, handshake_timeout: float
    ) -> trio.SSLStream[trio.abc.Stream]:
        """The TLS handshake after a 220 to STARTTLS; TlsHandshakeError closes the channel."""
        try:
            tls_stream = await start_tls(
                self.stream,
                context,
                server_side=False,
                server_hostname=self.host,
                handshake_timeout=handshake_timeout,
            )
        except TlsHandshakeError:
            self._broken = True
            raise
        self.stream = tls_stream
        self.conn.tls_established()
        return tls_stream

    async def quit(self) -> None:
        """QUIT politely if the session is usable, then wait briefly for the server to close.

        Waiting for the server's end keeps a destination's connection count honest:
        a session's slot is given back only once its connection is really gone.
        """
        if not self.usable or self.conn.in_transaction:
            return
        try:
            self.conn.send_quit()
            with trio.move_on_after(QUIT_TIMEOUT):
                await self.event(QUIT_TIMEOUT)
                while await self.stream.receive_some(RECEIVE_SIZE):
                    pass
        except (ChannelBroken, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    async def aclose(self) -> None:
        """Close the connection (no QUIT)."""
        self._broken = True
        await trio.aclose_forcefully(self.stream)

    async def __aenter__(self) -> SmtpChannel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
