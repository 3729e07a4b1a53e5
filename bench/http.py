"""HTTP API benchmark: messages/s accepted through the API, next to SMTP submission.

    .venv/bin/python bench/http.py            # 15 s per scenario
    .venv/bin/python bench/http.py --quick    # 4 s per scenario

One relay shard (relay.app.run_shard: spool with fsync'd group commits, scheduler,
delivery, SMTP submission and the HTTP API, logging at info level as JSON to
/dev/null as in production) runs in a child process (this file with --serve) in
a fresh directory.  Delivery is held back by a tenant suspension so that only
acceptance is measured.  The load comes from this process, one scenario after
the other against the same shard:

  HTTP 1 rcpt        POST /v1/messages, one recipient, a 5 KiB text body: the API
                     builds the MIME message, ingest stores it (202 after commit)
  HTTP batch x100    POST /v1/messages with `recipients`: 100 messages per request,
                     each with its own To and substitutions
  HTTP 1 msg x100    POST /v1/messages with 100 addresses in `to`: one message
  SMTP 1 rcpt        relay.loadgen.run_send against the submission port (AUTH PLAIN,
                     no TLS on loopback, pipelining), 5 KiB messages
  SMTP 1 msg x100    the same with 100 RCPT TO per message

The HTTP client is a minimal keep-alive HTTP/1.1 client on trio sockets (each
session sends one pre-built request after the other), so the client costs little
next to the server.  Both sides share the machine's cores: compare rows, not
absolute numbers across machines.  Printed: the parameters, then one table with
messages/s, recipients/s, requests/s, latency p50/p99 and the relay's CPU time
per message.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio

# Run as a script, this file's directory leads sys.path, and this file would shadow the
# standard library's `http` package (which prometheus-client and httpx import).
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from relay.app import run_shard  # noqa: E402 (after the sys.path fix)
from relay.config import (  # noqa: E402
    ApiConfig,
    Config,
    DeliveryConfig,
    RouteConfig,
    ServerConfig,
    SubmissionConfig,
    shard_dir,
)
from relay.fastparse import IMPLEMENTATION  # noqa: E402
from relay.loadgen import SendConfig, run_send  # noqa: E402
from relay.log import configure_logging  # noqa: E402
from relay.scheduler.control import Suspension, put_suspension  # noqa: E402
from relay.spool import open_spool  # noqa: E402

USER, PASSWORD = "bench", "bench-password-not-secret"
SENDER = "news@bench.example"
BODY_SIZE = 5 * 1024


# --- the relay, in a child process ----------------------------------------------------


def relay_config(directory: Path) -> Config:
    return Config(
        server=ServerConfig(hostname="relay.bench", data_dir=str(directory), shutdown_grace=5.0),
        submission=SubmissionConfig(
            listen=("127.0.0.1:0",),
            listen_tls=(),
            require_tls=False,  # loopback; the HTTP side is plain HTTP too
            max_connections=10_000,
            max_connections_per_ip=10_000,
            max_messages_per_connection=10_000_000,
        ),
        delivery=DeliveryConfig(nameservers=("127.0.0.1",)),
        api=ApiConfig(listen=("127.0.0.1:0",)),
        routes=(RouteConfig(domain="*", host="127.0.0.1", port=1, tls="disabled"),),
    )


async def serve(directory: Path) -> None:
    """Run a shard; print its ports and an API key, then (stdin closed) the CPU time."""
    configure_logging("info", json=True)  # stderr is /dev/null: the cost, not the noise
    cfg = relay_config(directory)
    async with open_spool(shard_dir(cfg, 0), map_size=cfg.spool.map_size) as spool:
        hold = Suspension("tenant", "bench", since=time.time(), reason="benchmark: accept only")
        await put_suspension(spool, hold)
    async with trio.open_nursery() as nursery:
        shard = await nursery.start(partial(run_shard, cfg, handle_signals=False))
        await shard.users.add(USER, PASSWORD, tenant="bench", sender_domains=("bench.example",))
        _key, token = await shard.api.keys.create("bench", ["bench.example"])
        smtp_port = shard.submission.addresses[next(iter(shard.submission.addresses))][0].port
        print(
            json.dumps({"api": shard.api.addresses[0][1], "smtp": smtp_port, "token": token}),
            flush=True,
        )
        await trio.to_thread.run_sync(sys.stdin.read)  # until the parent closes it
        shard.stop()
    print(json.dumps({"accepted": shard.ingest.statistics.accepted}), flush=True)


# --- the HTTP load -------------------------------------------------------------------


@dataclass
class Load:
    messages: int = 0
    recipients: int = 0
    requests: int = 0
    failed: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)


_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)


def http_request(port: int, token: str, doc: dict[str, Any]) -> bytes:
    body = json.dumps(doc).encode()
    head = (
        f"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def http_session(
    port: int, request: bytes, per_request: tuple[int, int], deadline: float, load: Load
) -> None:
    """Requests back to back on one keep-alive connection until `deadline`."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    buffer = b""
    async with stream:
        while trio.current_time() < deadline:
            started = trio.current_time()
            await stream.send_all(request)
            while b"\r\n\r\n" not in buffer:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    raise RuntimeError("the server closed the connection")
                buffer += chunk
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            m = _LENGTH.search(head)
            length = int(m.group(1)) if m else 0
            while len(buffer) < length:
                buffer += await stream.receive_some(65536)
            buffer = buffer[length:]
            status = int(head[9:12])
            load.requests += 1
            if status == 202:
                load.messages += per_request[0]
                load.recipients += per_request[1]
                load.latencies.append(trio.current_time() - started)
            else:
                load.failed[status] = load.failed.get(status, 0) + 1


async def http_run(
    port: int, request: bytes, per_request: tuple[int, int], sessions: int, seconds: float
) -> tuple[Load, float]:
    load = Load()
    started = trio.current_time()
    deadline = started + seconds
    async with trio.open_nursery() as nursery:
        for _ in range(sessions):
            nursery.start_soon(http_session, port, request, per_request, deadline, load)
    return load, trio.current_time() - started


# --- the run ---------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Row:
    name: str
    messages: int
    recipients: int
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    cpu: float
    failed: str


def text_doc(**fields: Any) -> dict[str, Any]:
    line = "a" * 76 + "\n"
    body = line * (BODY_SIZE // len(line))
    return {"from": SENDER, "subject": "benchmark", "text": body, **fields}


async def measure(args: argparse.Namespace) -> list[Row]:
    seconds = 4.0 if args.quick else args.seconds
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="relay-bench-http-") as directory:
        child = subprocess.Popen(
            [sys.executable, __file__, "--serve", directory],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert child.stdout is not None and child.stdin is not None
            ready = json.loads(await trio.to_thread.run_sync(child.stdout.readline))
            api, smtp, token = ready["api"], ready["smtp"], ready["token"]
            rcpts = [f"user{i}@dest.example" for i in range(100)]
            http_cases = [
                ("HTTP 1 rcpt", text_doc(to="user@dest.example"), (1, 1), args.sessions),
                (
                    "HTTP batch x100",
                    text_doc(
                        recipients=[
                            {"address": r, "substitutions": {"n": str(i)}}
                            for i, r in enumerate(rcpts)
                        ],
                        subject="benchmark {{ n }}",
                    ),
                    (100, 100),
                    max(1, args.sessions // 5),
                ),
                ("HTTP 1 msg x100", text_doc(to=rcpts), (1, 100), args.sessions),
            ]
            for name, doc, per_request, sessions in http_cases:
                before = cpu_seconds(child.pid)
                load, elapsed = await http_run(
                    api, http_request(api, token, doc), per_request, sessions, seconds
                )
                rows.append(
                    Row(
                        name,
                        load.messages,
                        load.recipients,
                        load.requests,
                        elapsed,
                        percentile(load.latencies, 0.5) * 1000,
                        percentile(load.latencies, 0.99) * 1000,
                        cpu_seconds(child.pid) - before,
                        json.dumps(load.failed) if load.failed else "",
                    )
                )
            for name, recipients in (("SMTP 1 rcpt", 1), ("SMTP 1 msg x100", 100)):
                before = cpu_seconds(child.pid)
                report = await run_send(
                    SendConfig(
                        "127.0.0.1",
                        smtp,
                        sessions=args.sessions,
                        duration=seconds,
                        size=BODY_SIZE,
                        recipients=recipients,
                        domains=(("dest.example", 1),),
                        sender=SENDER,
                        auth=(USER, PASSWORD),
                    )
                )
                rows.append(
                    Row(
                        name,
                        report.accepted,
                        report.recipients_accepted,
                        report.accepted,
                        report.elapsed,
                        report.latency_ms.get("p50", 0.0),
                        report.latency_ms.get("p99", 0.0),
                        cpu_seconds(child.pid) - before,
                        json.dumps(dict(report.errors)) if report.failed else "",
                    )
                )
        finally:
            if child.stdin is not None:
                child.stdin.close()
            child.wait(timeout=60)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 s per scenario")
    parser.add_argument("--seconds", type=float, default=15.0, help="per scenario")
    parser.add_argument("--sessions", type=int, default=20, help="concurrent clients")
    parser.add_argument("--serve", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        trio.run(serve, Path(args.serve))
        return
    print(
        f"relay HTTP API vs SMTP submission: one shard, spool fsync on, delivery held; "
        f"{4.0 if args.quick else args.seconds:g} s per scenario, {args.sessions} sessions "
        f"({max(1, args.sessions // 5)} for the batch), {BODY_SIZE} B bodies; "
        f"fastparse={IMPLEMENTATION}; cpus={os.cpu_count()}"
    )
    rows = trio.run(measure, args)
    header = (
        f"{'scenario':<17}{'msgs/s':>9}{'rcpts/s':>10}{'req/s':>9}{'p50 ms':>9}"
        f"{'p99 ms':>9}{'relay CPU ms/msg':>18}  errors"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        cpu_per = r.cpu * 1000 / r.messages if r.messages else 0.0
        print(
            f"{r.name:<17}{r.messages / r.seconds:>9.0f}{r.recipients / r.seconds:>10.0f}"
            f"{r.requests / r.seconds:>9.0f}{r.p50_ms:>9.1f}{r.p99_ms:>9.1f}{cpu_per:>18.3f}  {r.failed}"
        )


if __name__ == "__main__":
    main()
