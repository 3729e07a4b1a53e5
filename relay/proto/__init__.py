"""Sans-IO SMTP: the server and client state machines (RFC 5321 and extensions).

No sockets, no clocks, no logging: bytes in -> events out, replies in -> bytes out,
in the manner of h11.  Timeouts, TLS and the actual reads and writes belong to the
I/O adapters (relay.net and its users); policy (who may relay, which credentials
are valid, per-user limits) belongs to the caller, who answers events.  Parsing is
done by relay.fastparse (LineReader, DataReader, ReplyReader, dot_stuff).

Server (`ServerConnection`, configured by a shared `ServerConfig`)::

    conn = ServerConnection(ServerConfig(hostname="mx.example", starttls=True,
                                         auth_mechanisms=("PLAIN", "LOGIN")))
    conn.send_greeting()                 # early_talker tells of bytes before this
    loop:
        event = conn.next_event()
        NEED_DATA         -> write(conn.data_to_send()); conn.receive_data(read())
        Hello             -> conn.accept()             # 250 + the extension list
        StartTLS          -> conn.accept(); write; handshake; conn.tls_established()
        AuthRequest       -> conn.accept() or conn.send_reply(535, "5.7.8", "...")
        MailFrom, RcptTo  -> conn.accept() or conn.send_reply(550, "5.7.1", "...")
        DataCommand       -> conn.accept()             # 354
        DataComplete      -> store durably; conn.accept("queued as <id>")
        DataFailed        -> conn.send_reply(event.code, event.enhanced, event.text)
        ConnectionClosed  -> write(conn.data_to_send()); close

The server answers by itself whatever needs no decision (NOOP, RSET, HELP, VRFY
252, EXPN 502, QUIT, syntax and sequence errors with enhanced codes), replies in
command order, and leaves the replies to a pipelined group in `data_to_send()`
until all buffered input is handled (RFC 2920).  `shutdown()` sends an
unsolicited 421 (timeouts, shutdown).

Client (`ClientConnection`; ``pipelining=False`` never pipelines)::

    conn = ClientConnection("relay.example")
    Greeting          -> conn.send_ehlo()                 # HELO follows a 5xx
    HelloReply        -> conn.extensions; send_starttls() / send_auth_*() /
                         send_mail(sender, recipients, size=...)
    StartTLSReply     -> (220) write; handshake; conn.tls_established(); send_ehlo()
    ReadyForData      -> conn.send_data(content)   # or send_data_chunk()/end_data()
    TransactionComplete -> event.result.outcome(): each recipient's deciding reply;
                         then the next send_mail() (no extra round trip) or send_quit()
    ServiceClosing    -> a 421: defer whatever is in flight (event.transaction)
    also: send_rset(), send_noop() -> CommandReply; send_quit() -> CommandReply, closed

The client pipelines MAIL, every RCPT and DATA in one write when the server
offers PIPELINING, and waits only for the reply to DATA and to the end of data.

Errors, as in h11: LocalProtocolError when the caller asks for something the
protocol state does not allow; RemoteProtocolError (code, enhanced, text) when
the peer breaks the protocol beyond recovery.  Recoverable peer errors never
raise: the server answers them itself (and counts them, `error_count`).

Not implemented: CHUNKING/BDAT (answered 502), DSN parameters (555), and SASL
mechanisms beyond PLAIN and LOGIN.
"""

from relay.proto.client import ClientConnection
from relay.proto.events import (
    NEED_DATA,
    AuthReply,
    AuthRequest,
    ClientEvent,
    CloseReason,
    CommandReply,
    ConnectionClosed,
    DataCommand,
    DataComplete,
    DataFailed,
    Greeting,
    Hello,
    HelloReply,
    MailFrom,
    NeedData,
    RcptTo,
    ReadyForData,
    RecipientReply,
    ServerEvent,
    ServiceClosing,
    StartTLS,
    StartTLSReply,
    TransactionComplete,
    TransactionResult,
)
from relay.proto.paths import (
    AddressError,
    ParameterError,
    parse_mailbox,
    parse_path,
    parse_path_and_parameters,
    xtext_decode,
    xtext_encode,
)
from relay.proto.replies import Extensions, Reply, format_reply
from relay.proto.server import ServerConfig, ServerConnection

__all__ = [
    "NEED_DATA",
    "AddressError",
    "AuthReply",
    "AuthRequest",
    "ClientConnection",
    "ClientEvent",
    "CloseReason",
    "CommandReply",
    "ConnectionClosed",
    "DataCommand",
    "DataComplete",
    "DataFailed",
    "Extensions",
    "Greeting",
    "Hello",
    "HelloReply",
    "MailFrom",
    "NeedData",
    "ParameterError",
    "RcptTo",
    "ReadyForData",
    "RecipientReply",
    "Reply",
    "ServerConfig",
    "ServerConnection",
    "ServerEvent",
    "ServiceClosing",
    "StartTLS",
    "StartTLSReply",
    "TransactionComplete",
    "TransactionResult",
    "format_reply",
    "parse_mailbox",
    "parse_path",
    "parse_path_and_parameters",
    "xtext_decode",
    "xtext_encode",
]
