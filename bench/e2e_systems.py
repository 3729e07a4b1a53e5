"""The systems bench/e2e.py measures, each started fresh for one run:

- relay: `relay serve --workers N` with a fresh data directory, a route sending
  every domain to the sink, a benchmark user (AUTH PLAIN on the submission port)
  and a port-25-style listener trusting 127.0.0.0/8 (for smtp-source, which has
  no AUTH);
- Postfix: a private instance on a loopback port (relay.testing.postfix),
  relaying everything to the sink, with a fresh (so empty) queue;
- wire: nothing in between, the load generator talks to the sink directly.

Each exposes `port(authenticated)` for the load generator, a TreeWatch over its
processes (None for the wire) and `stop()`, which stops what it started by PID
(relay: SIGTERM to the supervisor, then SIGKILL to what is left of its tree;
Postfix: ``postfix -c DIR stop``) and returns notes for the report.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
from abc import ABC, abstractmethod
from contextlib import AsyncExitStack, suppress
from pathlib import Path
from typing import Any, Final

import trio
from e2e_procs import TreeWatch, alive, free_port, kill_known
from e2e_tools import BENCH_USER, RELAY, ROOT, wait_listening

__all__ = ["POSTFIX_INSTALLED", "PostfixSystem", "RelaySystem", "System", "Wire"]

POSTFIX_INSTALLED: Final = Path("/usr/sbin/postfix").exists()
STARTUP_TIMEOUT: Final = 90.0
SHUTDOWN_GRACE: Final = 10.0


class System(ABC):
    """A system under test."""

    name = "system"
    watch: TreeWatch | None = None

    @abstractmethod
    async def start(self, sink_port: int, directory: Path, *, tls: bool) -> None:
        """Start it, delivering to 127.0.0.1:`sink_port`; return once it takes mail."""

    @abstractmethod
    def port(self, authenticated: bool) -> int:
        """Where the load goes: the AUTH port, or the one trusting loopback."""

    @abstractmethod
    async def stop(self) -> dict[str, Any]:
        """Stop everything it started; notes for the report."""

    def failure(self) -> str | None:
        """Why the figures of this run cannot be trusted (a process died), if so."""
        return None


class Wire(System):
    """No system: the load generator talks to the sink."""

    name = "wire"

    def __init__(self) -> None:
        self._sink_port = 0

    async def start(self, sink_port: int, directory: Path, *, tls: bool) -> None:
        self._sink_port = sink_port

    def port(self, authenticated: bool) -> int:
        return self._sink_port

    async def stop(self) -> dict[str, Any]:
        return {}


def relay_config(
    data_dir: Path,
    *,
    submission_port: int,
    tls_port: int,
    relay_port: int,
    sink_port: int,
    workers: int,
    concurrency: int,
    log_level: str,
) -> str:
    """The TOML configuration of a benchmark relay (loopback only, no DNS)."""
    return f"""# written by bench/e2e.py: loopback only
[server]
hostname = "relay.bench.test"
data_dir = "{data_dir}"
workers = {workers}
log_level = "{log_level}"
log_json = true
shutdown_grace = "{SHUTDOWN_GRACE:g}s"

[submission]
listen = ["127.0.0.1:{submission_port}"]
listen_tls = ["127.0.0.1:{tls_port}"]
require_tls = false  # AUTH without TLS on the plain run; the TLS run uses STARTTLS

[relay_port]
listen = ["127.0.0.1:{relay_port}"]
trusted_networks = ["127.0.0.0/8"]

[delivery]
nameservers = ["127.0.0.1"]  # never asked: every domain has a static route
max_sessions_per_site = {concurrency}

[[route]]
domain = "*"
host = "127.0.0.1"
port = {sink_port}
tls = "disabled"
"""


def _log_records(text: bytes, event: str) -> list[dict[str, Any]]:
    """The JSON log lines of `text` whose event is `event`."""
    found = []
    marker = f'"{event}"'.encode()
    # Shards share one log file and their lines sometimes run together ("}{"): split them.
    for line in text.replace(b"}{", b"}\n{").splitlines():
        if marker not in line:
            continue
        with suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and record.get("event") == event:
                found.append(record)
    return found


def _log_events(path: Path, event: str) -> list[dict[str, Any]]:
    """The JSON log lines of the file `path` whose event is `event`."""
    try:
        return _log_records(path.read_bytes(), event)
    except FileNotFoundError:
        return []


def _crash_reason(log_tail: bytes) -> str:
    """The last exception line of a traceback in the log ("RuntimeError: ...")."""
    text = [line.strip(" |") for line in log_tail.decode(errors="replace").splitlines()]
    for line in reversed(text):
        if re.match(r"^[\w.]+(Error|Exception|Exit|Interrupt)\b", line):
            return line[:300]
    return "no traceback in the log (killed?)"


def _error_lines(path: Path) -> int:
    """Log lines at level error or above."""
    count = 0
    with suppress(FileNotFoundError), path.open(errors="replace") as log:
        for line in log:
            compact = line.replace('": "', '":"')  # orjson writes no spaces
            if '"level":"error"' in compact or '"level":"critical"' in compact:
                count += 1
    return count


class RelaySystem(System):
    """`relay serve --workers N` delivering to the sink."""

    name = "relay"

    def __init__(self, workers: int, concurrency: int, log_level: str) -> None:
        self.workers = workers
        self.concurrency = concurrency
        self.log_level = log_level
        self.password = secrets.token_urlsafe(16)
        self.submission_port = 0
        self.relay_port = 0
        self.log_file = Path()
        self.process: trio.Process | None = None
        self._log_offset = 0
        self._log_tail = b""

    async def start(self, sink_port: int, directory: Path, *, tls: bool) -> None:
        home = directory / "relay"
        home.mkdir()
        self.submission_port, self.relay_port = free_port(), free_port()
        config_file = home / "relay.toml"
        config_file.write_text(
            relay_config(
                home / "data",
                submission_port=self.submission_port,
                tls_port=free_port(),
                relay_port=self.relay_port,
                sink_port=sink_port,
                workers=self.workers,
                concurrency=self.concurrency,
                log_level=self.log_level,
            )
        )
        added = await trio.run_process(
            [*RELAY, "user", "add", BENCH_USER, "--domain", "loadgen.test", "--password-stdin",
             "--config", str(config_file)],
            stdin=f"{self.password}\n".encode(),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=ROOT,
        )  # fmt: skip
        if added.returncode != 0:
            raise RuntimeError(f"relay user add failed: {added.stderr.decode(errors='replace')}")
        self.log_file = home / "relay.log"
        with self.log_file.open("wb") as log:
            self.process = await trio.lowlevel.open_process(
                [*RELAY, "serve", "--config", str(config_file), "--workers", str(self.workers)],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.watch = TreeWatch(self.process.pid)
        await wait_listening(self.submission_port, self.process, STARTUP_TIMEOUT)
        await wait_listening(self.relay_port, self.process, STARTUP_TIMEOUT)
        if self.log_level in ("debug", "info"):
            # Every shard must listen before the load starts, or the kernel gives the
            # first connections all to the shards that were quicker.
            with trio.move_on_after(STARTUP_TIMEOUT) as waited:
                while len(_log_events(self.log_file, "ready")) < self.workers:
                    await trio.sleep(0.1)
            if waited.cancelled_caught:
                raise RuntimeError(f"not every relay shard was ready after {STARTUP_TIMEOUT:g}s")
        else:
            await trio.sleep(2.0)
        self.watch.sample()

    def port(self, authenticated: bool) -> int:
        return self.submission_port if authenticated else self.relay_port

    def failure(self) -> str | None:
        """The supervisor exited, or a shard died (the log says ``shard_died``)."""
        if self.process is None:
            return None
        if self.process.poll() is not None:
            return f"relay serve exited with status {self.process.returncode}"
        with suppress(FileNotFoundError), self.log_file.open("rb") as log:
            log.seek(self._log_offset)
            fresh = log.read()
            # Look at whole lines only; the rest is read again next time.
            self._log_offset += fresh.rfind(b"\n") + 1
            fresh = fresh[: fresh.rfind(b"\n") + 1]
            tail = (self._log_tail + fresh)[-20_000:]
            self._log_tail = tail[tail.find(b"\n") + 1 :] if len(tail) == 20_000 else tail
            if b'"shard_died"' in fresh:
                died = _log_records(fresh, "shard_died")
                which = (
                    f"shard {died[0].get('shard')}, status {died[0].get('status')}" if died else "?"
                )
                return f"a relay shard died ({which}): {_crash_reason(self._log_tail)}"
        return None

    async def stop(self) -> dict[str, Any]:
        if self.process is None or self.watch is None:
            return {}
        self.watch.sample()
        if self.process.returncode is None:
            with suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            with trio.move_on_after(SHUTDOWN_GRACE + 20.0):
                await self.process.wait()
        killed = kill_known(self.watch.known)
        with trio.move_on_after(10.0):
            await self.process.wait()
        stopped = [r for r in _log_events(self.log_file, "stopped") if r.get("component") == "app"]
        return {
            "exit_status": self.process.returncode,
            "killed_after_grace": killed,
            "left_in_queue": sum(int(r.get("queued", 0)) for r in stopped),
            "shards_stopped": len(stopped),
            "shards_died": len(_log_events(self.log_file, "shard_died")),
            "error_lines": _error_lines(self.log_file),
        }


class PostfixSystem(System):
    """A private Postfix on a loopback port relaying to the sink (fresh queue)."""

    name = "postfix"

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self._stack = AsyncExitStack()
        self._port = 0
        self._instance: Any = None

    async def start(self, sink_port: int, directory: Path, *, tls: bool) -> None:
        from relay.net import ensure_self_signed_certificate
        from relay.testing.postfix import open_postfix

        home = directory / "postfix"
        home.mkdir()
        os.chmod(home, 0o755)  # Postfix's daemons run as the postfix user
        extra = {"default_destination_concurrency_limit": str(self.concurrency)}
        if tls:
            cert, key = ensure_self_signed_certificate(home / "tls", "postfix.bench.test")
            extra |= {
                "smtpd_tls_security_level": "may",
                "smtpd_tls_cert_file": str(cert),
                "smtpd_tls_key_file": str(key),
            }
        self._instance = await self._stack.enter_async_context(
            open_postfix(home, relayhost=f"[127.0.0.1]:{sink_port}", extra=extra)
        )
        self._port = self._instance.port
        pid = self._instance.master_pid()
        if pid is None:
            await self._stack.aclose()
            raise RuntimeError("private Postfix started but wrote no master.pid")
        self.watch = TreeWatch(pid)
        self.watch.sample()

    def port(self, authenticated: bool) -> int:
        return self._port  # Postfix takes mail from 127.0.0.0/8 without AUTH

    def failure(self) -> str | None:
        if self.watch is not None and not alive(self.watch.root):
            return "Postfix's master process is gone"
        return None

    async def stop(self) -> dict[str, Any]:
        if self._instance is None or self.watch is None:
            return {}
        self.watch.sample()
        sent = self._instance.sent()
        await self._stack.aclose()
        killed = kill_known(self.watch.known)
        return {"status_sent_in_log": sent, "killed_after_stop": killed}
