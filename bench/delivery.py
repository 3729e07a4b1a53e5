"""Delivery engine benchmark: a spool full of queued mail -> one destination MX.

    .venv/bin/python bench/delivery.py               # 20,000 x 2 KB, 20 sessions
    .venv/bin/python bench/delivery.py --quick       # 3,000 messages
    .venv/bin/python bench/delivery.py --no-sync --sessions 50 --profile

The spool (under a fresh directory in /tmp, deleted afterwards) is filled with N
messages of one recipient each, then the real Scheduler and DeliveryEngine start
and deliver them over a static route to a destination in ANOTHER process:
Postfix's smtp-sink when installed (a fast C sink), else `relay bench sink`.
Measured from the start of the scheduler until every outcome is written back to
the spool: messages per second, the relay process's CPU seconds, connections
made, and the spool's fsync setting (results are recorded with group commits; with
--no-sync they are not flushed, as a lower bound on what the disk costs).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from relay.config import Config, DeliveryConfig, RouteConfig, ServerConfig
from relay.delivery import DeliveryEngine, Router, destination_policy
from relay.log import configure_logging
from relay.model import NewMessage
from relay.net.dns import MxResolver
from relay.scheduler import Scheduler
from relay.spool import open_spool
from relay.testing.ports import free_port

SMTP_SINK = Path("/usr/sbin/smtp-sink")
SENDER = "bench@relay.test"


def start_destination(port: int) -> tuple[subprocess.Popen[bytes], str]:
    """A sink in its own process; returns it and its name."""
    if SMTP_SINK.exists():
        command = [str(SMTP_SINK), "-u", "postfix", f"127.0.0.1:{port}", "1000"]
        name = "smtp-sink"
    else:
        command = [sys.executable, "-m", "relay.cli", "bench", "sink", "--listen"]
        command += [f"127.0.0.1:{port}"]
        name = "relay bench sink"
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, name
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"{name} did not start")


def body(size: int) -> bytes:
    head = f"From: <{SENDER}>\r\nTo: <bench@dest.test>\r\nSubject: bench\r\n\r\n".encode()
    line = b"x" * 76 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


async def run(args: argparse.Namespace, directory: Path, port: int) -> dict[str, float]:
    config = Config(
        server=ServerConfig(hostname="relay.test"),
        delivery=DeliveryConfig(
            max_sessions_per_site=args.sessions,
            initial_sessions_per_site=args.sessions,
            max_messages_per_connection=args.per_connection,
            idle_session_timeout=1.0,
        ),
        routes=(RouteConfig(domain="*", host="127.0.0.1", port=port, tls="disabled"),),
    )
    async with open_spool(directory / "spool", sync=args.sync, map_size=8 << 30) as spool:
        content = body(args.size)
        for start in range(0, args.messages, 1000):
            count = min(1000, args.messages - start)
            await spool.store_many(
                [NewMessage(SENDER, (f"u{start + i}@dest.test",), content) for i in range(count)]
            )
        router = Router(config, MxResolver(nameservers=["127.0.0.1"], port=9))
        engine = DeliveryEngine(config, spool, router)
        scheduler = Scheduler(
            spool,
            ready_key=router.ready_key,
            on_ready_queue=engine.on_ready_queue,
            destination=destination_policy(config.delivery),
            max_rcpt_per_txn=config.delivery.max_recipients_per_transaction,
        )
        engine.attach(scheduler)
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.run)
            await nursery.start(scheduler.run)
            await scheduler.recover()
            while True:
                stats = engine.statistics()
                if stats.delivered + stats.bounced >= args.messages and not stats.pending_reports:
                    break
                await trio.sleep(0.05)
            elapsed = time.perf_counter() - started
            cpu1 = resource.getrusage(resource.RUSAGE_SELF)
            await engine.stop(trio.current_time() + 5)
            nursery.cancel_scope.cancel()
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {
        "elapsed": elapsed,
        "rate": args.messages / elapsed,
        "cpu": cpu,
        "delivered": stats.delivered,
        "deferred": stats.deferred,
        "connections": stats.connections,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=2048, help="bytes per message")
    parser.add_argument("--sessions", type=int, default=20, help="sessions to the site")
    parser.add_argument("--per-connection", type=int, default=100)
    parser.add_argument("--no-sync", dest="sync", action="store_false")
    parser.add_argument("--quick", action="store_true", help="3,000 messages")
    parser.add_argument("--profile", action="store_true", help="print the top functions")
    args = parser.parse_args()
    if args.quick:
        args.messages = min(args.messages, 3000)
    configure_logging("warning", json=True)
    port = free_port()
    sink, sink_name = start_destination(port)
    directory = Path(tempfile.mkdtemp(prefix="relay-bench-delivery-"))
    profile = cProfile.Profile() if args.profile else None
    try:
        if profile is not None:
            profile.enable()
        result = trio.run(run, args, directory, port)
        if profile is not None:
            profile.disable()
    finally:
        sink.terminate()
        sink.wait(10)
        shutil.rmtree(directory, ignore_errors=True)
    print(
        f"delivery: {args.messages} messages x {args.size} B -> {sink_name}, "
        f"{args.sessions} sessions, {args.per_connection}/connection, "
        f"fsync {'on' if args.sync else 'off'}"
    )
    print(
        f"  {result['rate']:,.0f} messages/s  ({result['elapsed']:.2f} s, "
        f"relay CPU {result['cpu']:.2f} s = {result['cpu'] / result['elapsed']:.0%} of a core, "
        f"{result['connections']:.0f} connections, "
        f"{result['deferred']:.0f} deferred)"
    )
    if profile is not None:
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
