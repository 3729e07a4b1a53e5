"""A real dnsmasq on a loopback port, serving a DnsZone (when dnsmasq is installed).

dnsmasq answers from its command line only (--conf-file=/dev/null --no-resolv
--no-hosts): records become --mx-host and --host-record, a missing type of a
known name answers NODATA, and `--address=/#/` makes every other name NXDOMAIN
(as do the zone's `nxdomain` names, `--address=/name/`).
dnsmasq cannot be told to fail, so `servfail` and `timeout` names are forwarded
(`--server=/name/...`) to an in-process FakeDnsServer that answers SERVFAIL or
stays silent - which dnsmasq relays as a recursive resolver would.

The process runs in the foreground, is stopped by its PID, and is never left
behind: `Dnsmasq.stop` terminates it, then kills it if it lingers.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager

import dns.exception
import dns.message
import dns.query
import trio

from relay.testing.dns import DnsEndpoint, DnsZone, canonical_name, open_fake_dns_server

DNSMASQ = "/usr/sbin/dnsmasq"
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0
_START_ATTEMPTS = 5
_PROBE_NAME = "relay-dnsmasq-probe.invalid"


def dnsmasq_executable() -> str | None:
    """The dnsmasq binary, or None when it is not installed."""
    if os.access(DNSMASQ, os.X_OK):
        return DNSMASQ
    return shutil.which("dnsmasq")


def dnsmasq_available() -> bool:
    """Whether dnsmasq is installed."""
    return dnsmasq_executable() is not None


def _free_port(host: str) -> int:
    """A port free for both UDP and TCP right now (dnsmasq binds both)."""
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port
    raise OSError("no port free for both UDP and TCP")


def dnsmasq_arguments(
    zone: DnsZone, *, host: str, port: int, upstream: tuple[str, int] | None = None
) -> list[str]:
    """The command-line options that make dnsmasq serve `zone` on host:port."""
    args = [
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--no-poll",
        "--bind-interfaces",
        f"--listen-address={host}",
        f"--port={port}",
        "--pid-file=",
        "--log-facility=-",
        f"--local-ttl={zone.ttl}",
    ]
    # Every name not configured here (nor forwarded below) answers NXDOMAIN.
    args.append("--address=/#/")
    for name, entries in sorted(zone.mx.items()):
        for preference, exchange in entries:
            target = canonical_name(exchange) or "."
            args.append(f"--mx-host={canonical_name(name)},{target},{preference}")
    for table in (zone.a, zone.aaaa):
        for name, addresses in sorted(table.items()):
            args.extend(
                f"--host-record={canonical_name(name)},{address},{zone.ttl}"
                for address in addresses
            )
    for name in sorted(zone.nxdomain):
        args.append(f"--address=/{canonical_name(name)}/")
    failing = {canonical_name(name) for name in zone.servfail | zone.timeout}
    if failing:
        if upstream is None:
            raise ValueError("servfail/timeout names need an upstream server")
        up_host, up_port = upstream
        for name in sorted(failing):
            args.append(f"--server=/{name}/{up_host}#{up_port}")
    return args


def _answers(host: str, port: int) -> bool:
    query = dns.message.make_query(_PROBE_NAME, "A")
    try:
        dns.query.udp(query, host, port=port, timeout=0.2)
    except (OSError, dns.exception.DNSException):
        return False
    return True


class Dnsmasq:
    """One dnsmasq process serving a zone; `start()` returns once it answers."""

    def __init__(
        self,
        zone: DnsZone,
        *,
        host: str = "127.0.0.1",
        upstream: tuple[str, int] | None = None,
        executable: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.zone = zone
        self.host = host
        self.upstream = upstream
        self.executable = executable or dnsmasq_executable()
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives until close()
        self.endpoint: DnsEndpoint | None = None

    def log_text(self) -> str:
        """What dnsmasq wrote to stderr so far."""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def start(self) -> DnsEndpoint:
        """Start dnsmasq on a free port (retrying if the port is taken meanwhile)."""
        if self.executable is None:
            raise FileNotFoundError("dnsmasq is not installed")
        for _ in range(_START_ATTEMPTS):
            port = _free_port(self.host)
            command = [
                self.executable,
                *dnsmasq_arguments(self.zone, host=self.host, port=port, upstream=self.upstream),
                *self.extra_args,
            ]
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log
            )
            deadline = time.monotonic() + _START_TIMEOUT
            while time.monotonic() < deadline and self.process.poll() is None:
                if _answers(self.host, port):
                    self.endpoint = DnsEndpoint(self.host, port, "dnsmasq")
                    return self.endpoint
            self.stop()
            if "in use" not in self.log_text():
                break
        raise RuntimeError(f"dnsmasq did not start:\n{self.log_text()}")

    def stop(self) -> None:
        """Terminate the process (by its PID), then kill it if it does not exit."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=_STOP_TIMEOUT)

    def close(self) -> None:
        """Stop and release the log file."""
        self.stop()
        self._log.close()


@asynccontextmanager
async def open_dnsmasq(zone: DnsZone, *, host: str = "127.0.0.1") -> AsyncIterator[DnsEndpoint]:
    """Run dnsmasq for `zone` for the duration of the block (plus its failing upstream)."""
    async with AsyncExitStack() as stack:
        upstream: tuple[str, int] | None = None
        if zone.servfail or zone.timeout:
            failing = DnsZone(servfail=set(zone.servfail), timeout=set(zone.timeout))
            server = await stack.enter_async_context(open_fake_dns_server(failing))
            upstream = (server.endpoint.host, server.endpoint.port)
        dnsmasq = Dnsmasq(zone, host=host, upstream=upstream)
        try:
            yield await trio.to_thread.run_sync(dnsmasq.start)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(dnsmasq.close)
