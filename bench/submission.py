"""Submission benchmark: messages/s acknowledged only once durable, next to smtp-sink.

    .venv/bin/python bench/submission.py            # 20 s per scenario
    .venv/bin/python bench/submission.py --quick    # 5 s per scenario

The relay runs in a child process (this file with ``--serve``): a SubmissionService
on loopback over a real spool (LMDB, ``sync=True``: every 250 follows an fsync'd
group commit) in a fresh directory, logging at info level as in production
(JSON to /dev/null).  The load comes from this process: N concurrent sessions,
each a simple trio client built on relay.proto.ClientConnection that pipelines
MAIL/RCPT/DATA and sends messages back to back until the time is up.

Scenarios:
  relay plain       the trusted port-25 listener: no TLS, no AUTH
  relay tls+auth    the 587 listener: STARTTLS, then AUTH PLAIN, then the messages
  smtp-sink         Postfix's smtp-sink on a loopback port, driven by the same
                    client: the rate of a server that stores nothing (scale only)

Printed: the parameters, then one table with messages/s, the ratio to smtp-sink,
per-message latency (p50/p99: MAIL sent to the final reply), fsyncs per message
and the relay's CPU time per message.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from relay.config import Config, RelayPortConfig, ServerConfig, SubmissionConfig
from relay.fastparse import IMPLEMENTATION
from relay.ingest import Ingest
from relay.log import configure_logging
from relay.model import TlsMode
from relay.net import TlsCertificateStore, client_context, open_listeners
from relay.proto import (
    NEED_DATA,
    AuthReply,
    ClientConnection,
    CommandReply,
    ConnectionClosed,
    Greeting,
    HelloReply,
    ReadyForData,
    ServiceClosing,
    StartTLSReply,
    TransactionComplete,
)
from relay.spool import open_spool
from relay.submission import SubmissionListeners, SubmissionService, UserStore
from relay.testing.ports import free_port
from relay.testing.tls import make_tls_files

SMTP_SINK = "/usr/sbin/smtp-sink"
MESSAGE_SIZE = 5 * 1024
USER, PASSWORD = "bench", "bench-password-not-secret"
SENDER = "news@bench.example"


def make_message(size: int) -> bytes:
    """A message of exactly `size` bytes, in CRLF lines of about 78 octets."""
    head = f"From: {SENDER}\r\nTo: someone@dest.example\r\nSubject: benchmark\r\n\r\n".encode()
    full, rest = divmod(size - len(head), 78)
    lines = [b"a" * 76 + b"\r\n"] * full
    if rest == 1 and lines:  # no room for a CRLF: lengthen the last full line instead
        lines[-1] = b"a" * 77 + b"\r\n"
    elif rest >= 2:
        lines.append(b"a" * (rest - 2) + b"\r\n")
    return head + b"".join(lines)


# --- the relay, in a child process ----------------------------------------------------


async def serve(directory: Path, sessions: int) -> None:
    """Run the service; print the ports, then (when stdin closes) the statistics."""
    configure_logging("info", json=True)  # stderr is /dev/null: the cost, not the noise
    tls_files = make_tls_files(directory / "tls")
    async with open_spool(directory / "spool", sync=True) as spool:
        users = UserStore(spool.aux("users"))  # the production scrypt cost
        await users.add(USER, PASSWORD, tenant="bench", sender_domains=("bench.example",))
        ingest = Ingest(spool, hostname="relay.bench")
        config = Config(
            server=ServerConfig(hostname="relay.bench"),
            submission=SubmissionConfig(
                listen=(),
                listen_tls=(),
                max_connections=4 * sessions,
                max_connections_per_ip=4 * sessions,
                max_messages_per_connection=10_000_000,
            ),
            relay_port=RelayPortConfig(trusted_networks=("127.0.0.0/8",)),
        )
        listeners = SubmissionListeners(
            submission=await open_listeners([("127.0.0.1", 0)]),
            relay=await open_listeners([("127.0.0.1", 0)]),
        )
        store = TlsCertificateStore(tls_files.cert_file, tls_files.key_file)
        service = SubmissionService(config, ingest, users, store, listeners=listeners)
        async with trio.open_nursery() as nursery:
            await nursery.start(service.serve)
            ports = {
                kind.value: addrs[0].port for kind, addrs in service.addresses.items() if addrs
            }
            print(json.dumps(ports), flush=True)
            await trio.to_thread.run_sync(sys.stdin.read)  # until the parent closes it
            service.stop(grace=2.0)
        spool_stats = spool.statistics()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    report = {
        "stored": spool_stats.stored,
        "commits": spool_stats.commits,
        "messages": service.statistics().messages,
        "cpu": usage.ru_utime + usage.ru_stime,
    }
    print(json.dumps(report), flush=True)


# --- the load ------------------------------------------------------------------------


@dataclass
class Load:
    """What the client sessions measured."""

    acknowledged: int = 0
    failed: int = 0
    latencies: list[float] = field(default_factory=list)


async def session(
    port: int, *, tls: ssl.SSLContext | None, content: bytes, deadline: float, load: Load
) -> None:
    """One client session: optional STARTTLS+AUTH, then messages until `deadline`."""
    stream: trio.abc.Stream = await trio.open_tcp_stream("127.0.0.1", port)
    conn = ClientConnection("client.bench")
    sent_at = 0.0

    def next_message() -> None:
        nonlocal sent_at
        if trio.current_time() >= deadline:
            conn.send_quit()
            return
        sent_at = trio.current_time()
        conn.send_mail(SENDER, ["someone@dest.example"], size=len(content))

    try:
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                out = conn.data_to_send()
                if out:
                    await stream.send_all(out)
                data = await stream.receive_some(65536)
                conn.receive_data(bytes(data))
            elif isinstance(event, Greeting):
                conn.send_ehlo()
            elif isinstance(event, HelloReply):
                if tls is not None and not conn.tls_active:
                    conn.send_starttls()
                elif tls is not None and not conn.authenticated:
                    conn.send_auth_plain(USER, PASSWORD)
                else:
                    next_message()
            elif isinstance(event, StartTLSReply):
                assert tls is not None and event.reply.code == 220, event
                await stream.send_all(conn.data_to_send())
                ssl_stream = trio.SSLStream(stream, tls, server_hostname="127.0.0.1")
                await ssl_stream.do_handshake()
                stream = ssl_stream
                conn.tls_established()
                conn.send_ehlo()
            elif isinstance(event, AuthReply):
                if event.reply.code != 235:
                    raise RuntimeError(f"AUTH refused: {event.reply}")
                next_message()
            elif isinstance(event, ReadyForData):
                conn.send_data(content)
            elif isinstance(event, TransactionComplete):
                if event.result.delivered:
                    load.acknowledged += 1
                    load.latencies.append(trio.current_time() - sent_at)
                else:
                    load.failed += 1
                next_message()
            elif isinstance(event, CommandReply):
                await stream.send_all(conn.data_to_send())
            elif isinstance(event, ServiceClosing | ConnectionClosed):
                return
    finally:
        await trio.aclose_forcefully(stream)


async def drive(
    port: int, *, sessions: int, duration: float, tls: bool, content: bytes
) -> tuple[Load, float]:
    load = Load()
    context = client_context(TlsMode.REQUIRED) if tls else None
    start = trio.current_time()
    deadline = start + duration
    async with trio.open_nursery() as nursery:
        for _ in range(sessions):
            nursery.start_soon(
                lambda: session(port, tls=context, content=content, deadline=deadline, load=load)
            )
    return load, trio.current_time() - start


# --- scenarios -----------------------------------------------------------------------


@dataclass
class Row:
    name: str
    load: Load
    elapsed: float
    server: dict[str, Any] | None = None

    @property
    def rate(self) -> float:
        return self.load.acknowledged / self.elapsed if self.elapsed else 0.0

    def percentile(self, p: float) -> float:
        values = sorted(self.load.latencies)
        if not values:
            return float("nan")
        return values[min(len(values) - 1, int(p * len(values)))] * 1000


def relay_scenarios(args: argparse.Namespace, content: bytes) -> list[Row]:
    directory = Path(tempfile.mkdtemp(prefix="relay-bench-", dir=args.dir))
    rows = []
    try:
        for name, tls in (("relay plain (port 25, trusted)", False), ("relay STARTTLS+AUTH", True)):
            workdir = directory / ("tls" if tls else "plain")
            workdir.mkdir()
            child = subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--serve",
                    str(workdir),
                    "--sessions",
                    str(args.sessions),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            try:
                assert child.stdin is not None and child.stdout is not None
                ports = json.loads(child.stdout.readline())
                port = ports["submission"] if tls else ports["relay"]
                load, elapsed = trio.run(
                    lambda port=port, tls=tls: drive(
                        port,
                        sessions=args.sessions,
                        duration=args.duration,
                        tls=tls,
                        content=content,
                    )
                )
                child.stdin.close()
                server = json.loads(child.stdout.readline())
                child.wait(timeout=60)
            finally:
                if child.poll() is None:
                    child.kill()
                    child.wait()
            rows.append(Row(name, load, elapsed, server))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return rows


def sink_scenario(args: argparse.Namespace, content: bytes) -> Row | None:
    if not os.path.exists(SMTP_SINK):
        return None
    port = free_port()
    command = [SMTP_SINK]
    if os.geteuid() == 0:
        command += ["-u", "nobody"]
    command += [f"127.0.0.1:{port}", "1024"]
    sink = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):  # until it listens (bounded)
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.1):
                break
            time.sleep(0.05)
        load, elapsed = trio.run(
            lambda: drive(
                port, sessions=args.sessions, duration=args.duration, tls=False, content=content
            )
        )
    finally:
        sink.send_signal(signal.SIGTERM)  # by PID: only the process we started
        try:
            sink.wait(timeout=10)
        except subprocess.TimeoutExpired:
            sink.kill()
            sink.wait()
    return Row("smtp-sink (no durability)", load, elapsed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 s per scenario")
    parser.add_argument("--duration", type=float, default=None, help="seconds per scenario")
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--size", type=int, default=MESSAGE_SIZE, help="message bytes")
    parser.add_argument("--dir", default=None, help="where the spools go (default: /tmp)")
    parser.add_argument("--serve", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        trio.run(serve, Path(args.serve), args.sessions)
        return
    args.duration = args.duration or (5.0 if args.quick else 20.0)
    content = make_message(args.size)
    print("submission benchmark")
    print(f"  message size     {len(content)} bytes, 1 recipient, pipelined MAIL/RCPT/DATA")
    print(f"  sessions         {args.sessions} concurrent, messages back to back")
    print(f"  duration         {args.duration:g} s per scenario")
    print("  relay            child process, spool sync=True (fsync per group commit), info logs")
    print(f"  fastparse        {IMPLEMENTATION}")
    print(f"  cpus             {os.cpu_count()} (client and server share them)")
    rows = relay_scenarios(args, content)
    sink = sink_scenario(args, content)
    if sink is not None:
        rows.append(sink)
    reference = sink.rate if sink is not None and sink.rate else None
    print()
    header = f"{'scenario':34} {'msgs/s':>9} {'vs sink':>8} {'p50 ms':>8} {'p99 ms':>8} {'fsync/msg':>10} {'cpu ms/msg':>11} {'failed':>7}"
    print(header)
    print("-" * len(header))
    for row in rows:
        ratio = f"{row.rate / reference:.2f}" if reference else "-"
        fsyncs = cpu = "-"
        if row.server and row.server["messages"]:
            fsyncs = f"{row.server['commits'] / row.server['messages']:.3f}"
            cpu = f"{1000 * row.server['cpu'] / row.server['messages']:.3f}"
        print(
            f"{row.name:34} {row.rate:9.0f} {ratio:>8} {row.percentile(0.5):8.2f}"
            f" {row.percentile(0.99):8.2f} {fsyncs:>10} {cpu:>11} {row.load.failed:>7}"
        )
    if sink is None:
        print(f"\n(smtp-sink not installed at {SMTP_SINK}: no reference row)")


if __name__ == "__main__":
    main()
