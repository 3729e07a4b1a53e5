"""A private Postfix instance on a loopback port, as a real destination MX (or a peer
to benchmark against), when Postfix is installed and we run as root.

The instance has its own configuration directory, queue and log under a directory
of the caller's (e.g. tmp_path), based on the setup in
shared/reference/postfix-bench: smtpd on 127.0.0.1:<port> only, mail accepted
from 127.0.0.0/8 without AUTH, no DNS (no MX lookups, no reverse lookups of
clients), no local delivery, nothing chrooted, logs to a file.  Accepted mail is
thrown away by the `discard:` transport, or relayed to `relayhost` when given
(e.g. a relay.loadgen sink).  It is stopped with ``postfix -c DIR stop`` and, if
its master lingers, killed by the PID in its own pid file, never by name.
"""

from __future__ import annotations

import os
import pwd
import re
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from relay.testing.ports import free_port

POSTFIX = "/usr/sbin/postfix"
_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 15.0

_MAIN_CF = """\
# A PRIVATE Postfix instance started by relay.testing.postfix (loopback only).
compatibility_level = 3.6
queue_directory = {spool}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop

myhostname = {hostname}
mydomain = {hostname}
myorigin = $myhostname
mydestination =
local_recipient_maps =
local_transport = error:local delivery disabled
alias_maps =
alias_database =
relay_domains =
biff = no

inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions = permit_mynetworks, reject
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
disable_dns_lookups = yes
smtp_tls_security_level = none
smtpd_tls_security_level = none
{transport}

maillog_file = {log}
maillog_file_prefixes = /var, /dev/stdout, {log_dir}
"""

_MASTER_CF = """\
# master.cf of a PRIVATE Postfix instance (relay.testing.postfix): no chroot.
{host}:{port} inet n       -       n       -       -       smtpd
pickup         unix  n       -       n       60      1       pickup
cleanup        unix  n       -       n       -       0       cleanup
qmgr           unix  n       -       n       300     1       qmgr
rewrite        unix  -       -       n       -       -       trivial-rewrite
bounce         unix  -       -       n       -       0       bounce
defer          unix  -       -       n       -       0       bounce
trace          unix  -       -       n       -       0       bounce
verify         unix  -       -       n       -       1       verify
flush          unix  n       -       n       1000?   0       flush
proxymap       unix  -       -       n       -       -       proxymap
proxywrite     unix  -       -       n       -       1       proxymap
smtp           unix  -       -       n       -       -       smtp
relay          unix  -       -       n       -       -       smtp
showq          unix  n       -       n       -       -       showq
error          unix  -       -       n       -       -       error
retry          unix  -       -       n       -       -       error
discard        unix  -       -       n       -       -       discard
local          unix  -       n       n       -       -       local
anvil          unix  -       -       n       -       1       anvil
scache         unix  -       -       n       -       1       scache
tlsmgr         unix  -       -       n       1000?   1       tlsmgr
postlog        unix-dgram n  -       n       -       1       postlogd
"""

_SENT = re.compile(rb"\bstatus=sent\b")


def postfix_available() -> bool:
    """True when Postfix is installed and can be started (we are root)."""
    return os.access(POSTFIX, os.X_OK) and os.geteuid() == 0


@dataclass(frozen=True)
class PostfixInstance:
    """A running private Postfix: where its smtpd listens and where it logs."""

    directory: Path
    config_dir: Path
    host: str
    port: int
    log_file: Path

    def log(self) -> bytes:
        """The instance's mail log so far."""
        try:
            return self.log_file.read_bytes()
        except FileNotFoundError:
            return b""

    def sent(self) -> int:
        """Recipients Postfix has finished with successfully (``status=sent``: relayed,
        or thrown away by the discard transport)."""
        return len(_SENT.findall(self.log()))

    def master_pid(self) -> int | None:
        """The PID of this instance's master process, if it runs."""
        try:
            text = (self.directory / "spool" / "pid" / "master.pid").read_text().strip()
        except (FileNotFoundError, ValueError):
            return None
        return int(text) if text.isdigit() else None


async def _postfix(config_dir: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [POSTFIX, "-c", str(config_dir), *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )


async def _wait_listening(host: str, port: int, timeout: float) -> bool:
    with trio.move_on_after(timeout):
        while True:
            try:
                stream = await trio.open_tcp_stream(host, port)
            except OSError:
                await trio.sleep(0.1)
                continue
            await stream.aclose()
            return True
    return False


async def _stop(instance: PostfixInstance) -> None:
    pid = instance.master_pid()
    await _postfix(instance.config_dir, "stop")
    if pid is None:
        return
    with trio.move_on_after(_STOP_TIMEOUT):
        while _alive(pid):
            await trio.sleep(0.1)
        return
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@asynccontextmanager
async def open_postfix(
    directory: str | os.PathLike[str] | None = None,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    relayhost: str | None = None,
    hostname: str = "postfix.test",
    extra: dict[str, str] | None = None,
) -> AsyncIterator[PostfixInstance]:
    """Start a private Postfix under `directory`; stop it when the block ends.

    Postfix's daemons run as the postfix user, so every directory above the
    instance must be searchable by it (pytest's tmp_path is not): by default the
    instance lives in a fresh directory under the system's temporary directory,
    removed afterwards.  `relayhost` (e.g. ``"[127.0.0.1]:2526"``) relays what it accepts there;
    without it every message is accepted and discarded.  `extra` adds main.cf
    settings.  Raises RuntimeError (with Postfix's output) if it does not start.
    """
    if directory is None:
        with tempfile.TemporaryDirectory(prefix="relay-postfix-") as temporary:
            os.chmod(temporary, 0o755)
            async with open_postfix(
                temporary,
                host=host,
                port=port,
                relayhost=relayhost,
                hostname=hostname,
                extra=extra,
            ) as instance:
                yield instance
        return
    root = Path(directory).resolve()
    etc, spool, data, log_dir = root / "etc", root / "spool", root / "data", root / "log"
    for path in (etc, spool, data, log_dir):
        path.mkdir(parents=True, exist_ok=True)
    owner = pwd.getpwnam("postfix")
    os.chown(data, owner.pw_uid, owner.pw_gid)  # master.lock and caches live there
    port = port or free_port(host)
    transport = (
        f"relayhost = {relayhost}"
        if relayhost
        else "default_transport = discard:accepted and discarded"
    )
    main_cf = _MAIN_CF.format(
        etc=etc,
        spool=spool,
        data=data,
        hostname=hostname,
        transport=transport,
        log=log_dir / "postfix.log",
        log_dir=log_dir,
    )
    main_cf += "".join(f"{key} = {value}\n" for key, value in (extra or {}).items())
    (etc / "main.cf").write_text(main_cf)
    (etc / "master.cf").write_text(_MASTER_CF.format(host=host, port=port))
    instance = PostfixInstance(root, etc, host, port, log_dir / "postfix.log")
    started = await _postfix(etc, "start")
    try:
        if started.returncode != 0 or not await _wait_listening(host, port, _START_TIMEOUT):
            output = (started.stdout + started.stderr).decode(errors="replace")
            raise RuntimeError(
                f"private Postfix did not start (exit {started.returncode}): {output}\n"
                f"{instance.log().decode(errors='replace')[-2000:]}"
            )
        yield instance
    finally:
        with trio.CancelScope(shield=True):
            await _stop(instance)
