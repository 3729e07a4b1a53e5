"""`relay bench send` -> `relay bench sink` next to Postfix's smtp-source -> smtp-sink.

Each pairing runs the same count, size and sessions over loopback, each tool in its
own process; the cross pairings (our send -> smtp-sink, smtp-source -> our sink)
show which side limits.  Figures: messages per second (count / wall time of the
sending process, start to exit), and the CPU seconds of the sender and the sink.
The Postfix tools are skipped when /usr/sbin/smtp-source or smtp-sink is missing.

    .venv/bin/python bench/loadgen.py                  # 20,000 x 5 KB, 50 sessions
    .venv/bin/python bench/loadgen.py --quick          # 2,000 messages
    .venv/bin/python bench/loadgen.py --sink-workers 2 --json-out /tmp/loadgen.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from relay.testing.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
SMTP_SOURCE = Path("/usr/sbin/smtp-source")
SMTP_SINK = Path("/usr/sbin/smtp-sink")
RELAY = [sys.executable, "-m", "relay.cli"]
STARTUP_TIMEOUT = 60.0


@dataclass
class Result:
    sender: str
    sink: str
    messages: int
    seconds: float
    sender_cpu: float
    sink_cpu: float
    accepted: int | None  # as the sender reports it (None: smtp-source does not say)
    received: int | None  # as the sink reports it (None: smtp-sink does not say)
    own_rate: float | None  # relay bench send's own figure: first connect to last 250

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the sink exited early ({process.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def reap(process: subprocess.Popen[bytes], timeout: float) -> float:
    """Wait for the process; its CPU seconds (with its reaped descendants)."""
    before = children_cpu()
    process.wait(timeout=timeout)
    return children_cpu() - before


class Sink:
    """A running sink process: ours or smtp-sink."""

    def __init__(self, kind: str, workers: int) -> None:
        self.kind = kind
        self.port = free_port()
        if kind == "relay":
            command = [
                *RELAY,
                "bench",
                "sink",
                "--port",
                str(self.port),
                "--workers",
                str(workers),
                "--quiet",
                "--interval",
                "3600",
            ]
            stdout = subprocess.PIPE
        else:
            command = [str(SMTP_SINK)]
            if os.geteuid() == 0:
                command += ["-u", "nobody"]
            command += [f"127.0.0.1:{self.port}", "1000"]
            stdout = subprocess.DEVNULL
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=stdout, stderr=subprocess.PIPE)
        wait_for_port(self.port, self.process)

    def stop(self) -> tuple[float, int | None]:
        """Stop it; (CPU seconds, messages it counted or None)."""
        self.process.send_signal(signal.SIGTERM)
        out = b""
        if self.process.stdout is not None:
            out = self.process.stdout.read()
        cpu = reap(self.process, 60.0)
        if self.kind != "relay":
            return cpu, None
        return cpu, int(json.loads(out)["totals"]["messages"])


@contextmanager
def running_sink(kind: str, workers: int) -> Iterator[Sink]:
    sink = Sink(kind, workers)
    try:
        yield sink
    finally:
        if sink.process.poll() is None:
            sink.process.kill()
            sink.process.wait()


def send(kind: str, port: int, args: argparse.Namespace) -> tuple[float, int | None, float | None]:
    """Run the sender to completion; (wall seconds, accepted, its own msgs/s) (None:
    smtp-source does not say)."""
    if kind == "relay":
        command = [
            *RELAY,
            "bench",
            "send",
            f"127.0.0.1:{port}",
            "--messages",
            str(args.messages),
            "--sessions",
            str(args.sessions),
            "--size",
            str(args.size),
            "--json",
            "--quiet",
        ]
    else:
        command = [
            str(SMTP_SOURCE),
            "-s",
            str(args.sessions),
            "-m",
            str(args.messages),
            "-l",
            str(args.size),
            "-d",
            f"127.0.0.1:{port}",
        ]
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = process.communicate(timeout=args.timeout)
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"{command[0]} failed: {err.decode(errors='replace')[-500:]}")
    if kind != "relay":
        return seconds, None, None
    report = json.loads(out)
    return seconds, int(report["accepted"]), float(report["messages_per_second"])


def run_pair(sender: str, sink_kind: str, args: argparse.Namespace) -> Result:
    with running_sink(sink_kind, args.sink_workers) as sink:
        before = children_cpu()  # the sink is not reaped yet: the delta is the sender's
        seconds, accepted, own_rate = send(sender, sink.port, args)
        sender_cpu = children_cpu() - before
        sink_cpu, received = sink.stop()
    return Result(
        sender,
        sink_kind,
        args.messages,
        seconds,
        sender_cpu,
        sink_cpu,
        accepted,
        received,
        own_rate,
    )


def postfix_version() -> str:
    try:
        out = subprocess.run(
            ["/usr/sbin/postconf", "-d", "mail_version"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
    except OSError:
        return "unknown"
    match = re.search(r"=\s*(\S+)", out)
    return match.group(1) if match else "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--size", type=int, default=5120)
    parser.add_argument("--sink-workers", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=600.0, help="per run (s)")
    parser.add_argument("--quick", action="store_true", help="2,000 messages")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.messages = 2_000
    postfix = SMTP_SOURCE.exists() and SMTP_SINK.exists()
    pairs = [("relay", "relay")]
    if postfix:
        pairs += [("smtp-source", "smtp-sink"), ("relay", "smtp-sink"), ("smtp-source", "relay")]

    print(
        f"messages={args.messages} size={args.size} sessions={args.sessions} "
        f"sink_workers={args.sink_workers} python={platform.python_version()} "
        f"cpus={os.cpu_count()} postfix={postfix_version() if postfix else 'not installed'}"
    )
    results = []
    for sender, sink in pairs:
        result = run_pair(sender, sink, args)
        results.append(result)
    header = (
        f"{'sender -> sink':28} {'msgs/s wall':>11} {'msgs/s own':>10} {'seconds':>8} "
        f"{'send CPU s':>10} {'sink CPU s':>10} {'accepted':>9} {'received':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        own = "-" if r.own_rate is None else f"{r.own_rate:.0f}"
        accepted = "-" if r.accepted is None else str(r.accepted)
        received = "-" if r.received is None else str(r.received)
        print(
            f"{r.sender + ' -> ' + r.sink:28} {r.rate:11.0f} {own:>10} {r.seconds:8.2f} "
            f"{r.sender_cpu:10.2f} {r.sink_cpu:10.2f} {accepted:>9} {received:>9}"
        )
    print(
        "msgs/s wall: messages / wall time of the sending process (with its start-up);\n"
        "msgs/s own: relay bench send's figure, first connection to the last 250."
    )
    if postfix:
        wire = results[1].rate
        ours = results[0].own_rate or results[0].rate
        print(
            f"relay send->sink / smtp-source->smtp-sink: {results[0].rate / wire:.2f} (wall), "
            f"{ours / wire:.2f} (own)"
        )
    if args.json_out:
        args.json_out.write_text(
            json.dumps(
                {
                    "parameters": vars(args) | {"json_out": str(args.json_out)},
                    "results": [asdict(r) | {"rate": r.rate} for r in results],
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
