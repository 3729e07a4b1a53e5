"""The `relay` command: one entry point with subcommands."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import click
import trio

from relay import __version__
from relay.config import ACCOUNTS_MAP_SIZE, Config, accounts_dir, load_config
from relay.errors import ConfigError

if TYPE_CHECKING:  # the submission package is heavy to import: load it only when used
    from relay.api.keys import ApiKey, ApiKeyStore
    from relay.spool import Spool
    from relay.submission.users import User, UserStore

T = TypeVar("T")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="relay")
def main() -> None:
    """relay: a high-throughput bulk-sending SMTP relay."""


@main.command("info")
def info() -> None:
    """Show which fastparse implementation is in use."""
    from relay import fastparse

    click.echo(f"relay {__version__}; fastparse implementation: {fastparse.IMPLEMENTATION}")


# --- relay user: submission accounts ------------------------------------------------


def _load_cli_config(config_file: str | None, data_dir: str | None) -> Config:
    try:
        cfg = load_config(config_file)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if data_dir:
        cfg = dataclasses.replace(cfg, server=dataclasses.replace(cfg.server, data_dir=data_dir))
    return cfg


config_option = click.option(
    "--config", "config_file", type=click.Path(dir_okay=False), help="TOML configuration file."
)
data_dir_option = click.option(
    "--data-dir", type=click.Path(file_okay=False), help="Override server.data_dir."
)


def _with_accounts(
    cfg: Config, action: Callable[[Spool], Awaitable[T]], errors: tuple[type[Exception], ...]
) -> T:
    """Run `action` on the accounts environment (users, API keys); `errors` become
    click errors with their message."""
    from relay.spool import open_spool

    async def run() -> T:
        accounts_dir(cfg).mkdir(parents=True, exist_ok=True)
        async with open_spool(accounts_dir(cfg), map_size=ACCOUNTS_MAP_SIZE) as spool:
            return await action(spool)

    try:
        return trio.run(run)
    except errors as exc:
        raise click.ClickException(str(exc)) from None


def _with_users(cfg: Config, action: Callable[[UserStore], Awaitable[T]]) -> T:
    from relay.submission.users import UserError, UserStore

    return _with_accounts(cfg, lambda spool: action(UserStore(spool.aux("users"))), (UserError,))


def _read_password(password_stdin: bool) -> tuple[str, bool]:
    """The password from stdin, or a generated one (True when generated)."""
    from relay.submission.users import generate_password

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if len(password) < 8:
            raise click.ClickException("the password must have at least 8 characters")
        return password, False
    return generate_password(), True


@main.group("user")
def user_group() -> None:
    """Manage submission users (AUTH PLAIN/LOGIN accounts)."""


@user_group.command("add")
@click.argument("name")
@click.option(
    "--domain",
    "domains",
    multiple=True,
    required=True,
    help="A sender domain the user may use (repeat; '.example.com' allows subdomains).",
)
@click.option("--tenant", default="", help="Tenant name (default: the user name).")
@click.option(
    "--rate",
    "rate_per_minute",
    type=click.IntRange(min=0),
    default=0,
    help="Messages per minute (0 = unlimited).",
)
@click.option(
    "--max-recipients",
    type=click.IntRange(min=0),
    default=0,
    help="Recipients per message (0 = the server's limit).",
)
@click.option(
    "--max-size",
    "max_message_size",
    type=click.IntRange(min=0),
    default=0,
    help="Maximum message size in bytes (0 = the server's limit).",
)
@click.option(
    "--password-stdin", is_flag=True, help="Read the password from stdin instead of generating one."
)
@config_option
@data_dir_option
def user_add(
    name: str,
    domains: tuple[str, ...],
    tenant: str,
    rate_per_minute: int,
    max_recipients: int,
    max_message_size: int,
    password_stdin: bool,
    config_file: str | None,
    data_dir: str | None,
) -> None:
    """Create a user; prints a generated password once."""
    cfg = _load_cli_config(config_file, data_dir)
    password, generated = _read_password(password_stdin)
    user = _with_users(
        cfg,
        lambda users: users.add(
            name,
            password,
            tenant=tenant,
            sender_domains=domains,
            rate_per_minute=rate_per_minute,
            max_recipients=max_recipients,
            max_message_size=max_message_size,
        ),
    )
    click.echo(
        f"user {user.name} added (tenant {user.tenant}; domains {', '.join(user.sender_domains)})"
    )
    if generated:
        click.echo(f"password: {password}")
        click.echo("(shown once: it is stored only as an scrypt hash)")


@user_group.command("list")
@config_option
@data_dir_option
def user_list(config_file: str | None, data_dir: str | None) -> None:
    """List users and their policy."""
    cfg = _load_cli_config(config_file, data_dir)

    async def action(users: UserStore) -> list[User]:
        return users.list()

    for user in _with_users(cfg, action):
        click.echo(
            f"{user.name}\ttenant={user.tenant}\tdomains={','.join(user.sender_domains)}"
            f"\trate={user.rate_per_minute}/min\tmax_rcpt={user.max_recipients}"
            f"\tmax_size={user.max_message_size}"
        )


@user_group.command("remove")
@click.argument("name")
@config_option
@data_dir_option
def user_remove(name: str, config_file: str | None, data_dir: str | None) -> None:
    """Delete a user."""
    cfg = _load_cli_config(config_file, data_dir)
    _with_users(cfg, lambda users: users.remove(name))
    click.echo(f"user {name} removed")


@user_group.command("passwd")
@click.argument("name")
@click.option(
    "--password-stdin", is_flag=True, help="Read the password from stdin instead of generating one."
)
@config_option
@data_dir_option
def user_passwd(
    name: str, password_stdin: bool, config_file: str | None, data_dir: str | None
) -> None:
    """Set a user's password; prints a generated password once."""
    cfg = _load_cli_config(config_file, data_dir)
    password, generated = _read_password(password_stdin)
    _with_users(cfg, lambda users: users.set_password(name, password))
    click.echo(f"password of {name} changed")
    if generated:
        click.echo(f"password: {password}")


# ======================================================================================
# relay queue: queue administration (owner: scheduler; relay.scheduler.admin does the work)
#
# Works on the spool directory of a running relay: LMDB lets this second process read
# and write the same environment.  Changes are written to the spool; the running
# scheduler re-reads suspensions and the requests left in the spool's "control" table
# every few seconds, and checks every message against the spool when it falls due
# (see relay.scheduler.control).  --spool is one shard directory, or a directory of
# shard directories (each is handled in turn).
# ======================================================================================

from typing import TYPE_CHECKING  # noqa: E402 -- this section keeps its imports to itself

if TYPE_CHECKING:
    from pathlib import Path

    from relay.model import MessageMeta
    from relay.scheduler.admin import MessageFilter, QueueSummary
    from relay.spool import Spool

_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


def _parse_duration(text: str) -> float:
    """Seconds from "90", "90s", "15m", "2h", "3d" or "1w"."""
    text = text.strip().lower()
    unit = _DURATION_UNITS.get(text[-1:])
    number = text[:-1] if unit is not None else text
    try:
        value = float(number) * (unit or 1.0)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a duration (e.g. 90, 15m, 2h, 3d)") from None
    if value < 0:
        raise click.BadParameter("a duration cannot be negative")
    return value


def _spool_shards(spool_dir: str) -> list[Path]:
    """The shard directories under --spool: itself if it is one, else its shard children."""
    from pathlib import Path

    root = Path(spool_dir)
    if (root / "data.mdb").is_file():
        return [root]
    shards = (
        sorted(p for p in root.iterdir() if (p / "data.mdb").is_file()) if root.is_dir() else []
    )
    if not shards:
        raise click.ClickException(f"no spool found in {spool_dir} (no data.mdb there or below)")
    return shards


def _on_each_shard(spool_dir: str, action: Callable[[Spool], Awaitable[T]]) -> list[tuple[Path, T]]:
    """Open each shard's spool in turn and run `action` on it."""
    from relay.errors import SpoolError
    from relay.spool import open_spool

    shards = _spool_shards(spool_dir)

    async def run() -> list[tuple[Path, T]]:
        results = []
        for shard in shards:
            async with open_spool(shard) as spool:
                results.append((shard, await action(spool)))
        return results

    try:
        return trio.run(run)
    except SpoolError as exc:
        raise click.ClickException(f"spool error: {exc}") from None


def _when(at: float | None) -> str:
    import datetime

    if at is None:
        return "-"
    moment = datetime.datetime.fromtimestamp(at, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _filter_options(fn: Callable[..., None]) -> Callable[..., None]:
    """The options that select messages, shared by retry, delete and bounce."""
    options = [
        click.option("--id", "ids", multiple=True, help="A message id (repeat)."),
        click.option("--domain", help="Messages with a pending recipient in this domain."),
        click.option("--tenant", help="Messages of this tenant."),
        click.option("--campaign", help="Messages of this campaign."),
        click.option("--sender", help="Envelope sender address, or @domain."),
        click.option("--older-than", help="Only messages older than this (e.g. 2h, 3d)."),
        click.option("--all", "everything", is_flag=True, help="Allow an empty filter."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _message_filter(
    ids: tuple[str, ...],
    domain: str | None,
    tenant: str | None,
    campaign: str | None,
    sender: str | None,
    older_than: str | None,
    everything: bool,
) -> MessageFilter:
    from relay.scheduler.admin import MessageFilter

    selection = MessageFilter(
        ids=ids,
        domain=domain.lower() if domain else None,
        tenant=tenant,
        campaign=campaign,
        sender=sender,
        older_than=None if older_than is None else _parse_duration(older_than),
    )
    if selection.is_empty() and not everything:
        raise click.UsageError("no filter given: name messages (--id, --domain, ...) or pass --all")
    return selection


spool_option = click.option(
    "--spool",
    "spool_dir",
    required=True,
    envvar="RELAY_SPOOL",
    type=click.Path(exists=True, file_okay=False),
    help="Spool shard directory, or a directory of shards (env RELAY_SPOOL).",
)


@main.group("queue")
def queue_group() -> None:
    """Inspect and manage the queue (also of a running relay)."""


def _print_summary(shard: Path, report: QueueSummary, top: int) -> None:
    from relay.scheduler.admin import STATES

    click.echo(f"spool {shard}: {report.messages} messages, {report.recipients} recipients")
    if report.oldest is not None:
        click.echo(f"  oldest message created {_when(report.oldest)}")
    click.echo("  " + "  ".join(f"{state} {report.by_state[state]}" for state in STATES))
    header = f"    {'':40} {'msgs':>8} {'rcpts':>8}" + "".join(f" {s:>9}" for s in STATES)
    for title, table in (("domain", report.by_domain), ("tenant", report.by_tenant)):
        if not table:
            continue
        click.echo(f"  by {title} (largest {top}):")
        click.echo(header)
        ranked = sorted(table.items(), key=lambda item: (-item[1].recipients, item[0]))
        for name, counts in ranked[:top]:
            cells = "".join(f" {getattr(counts, s):>9}" for s in STATES)
            label = name or "(none)"
            click.echo(f"    {label:40} {counts.messages:>8} {counts.recipients:>8}{cells}")
    for s in report.suspensions:
        until = f" until {_when(s.until)}" if s.until is not None else ""
        reason = f" ({s.reason})" if s.reason else ""
        click.echo(f"  suspended {s.kind} {s.name} since {_when(s.since)}{until}{reason}")


@queue_group.command("summary")
@spool_option
@click.option("--top", default=20, show_default=True, help="Rows per table.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def queue_summary(spool_dir: str, top: int, as_json: bool) -> None:
    """Queued messages and recipients by state, domain and tenant; suspensions."""
    import json

    from relay.scheduler import admin

    async def action(spool: Spool) -> QueueSummary:
        return admin.summary(spool)

    for shard, report in _on_each_shard(spool_dir, action):
        if as_json:
            document = dataclasses.asdict(report)
            document["spool"] = str(shard)
            click.echo(json.dumps(document, sort_keys=True))
        else:
            _print_summary(shard, report, top)


def _print_message(shard: Path, meta: MessageMeta) -> None:
    state = "completed" if meta.is_final else "queued"
    click.echo(f"message {meta.id} ({state}, spool {shard})")
    rows = [
        ("sender", f"<{meta.sender}>"),
        ("tenant", meta.tenant or "-"),
        ("campaign", meta.campaign or "-"),
        ("size", str(meta.size)),
        ("created", _when(meta.created)),
        ("expires", _when(meta.expires)),
        ("next attempt", _when(meta.next_attempt) if not meta.is_final else "-"),
        ("send at", _when(meta.send_at)),
        ("attempts", str(meta.attempts)),
        ("tags", ", ".join(meta.tags) or "-"),
    ]
    for label, value in rows:
        click.echo(f"  {label + ':':14} {value}")
    click.echo("  recipients:")
    for r in meta.recipients:
        reply = f"  {r.reply}" if r.reply else ""
        click.echo(f"    {r.address}  {r.status.name.lower()}  attempts={r.attempts}{reply}")
    if meta.history:
        click.echo("  history:")
        for a in meta.history:
            click.echo(
                f"    {_when(a.at)}  mx={a.mx or '-'}  {len(a.recipients)} rcpt"
                f"  {a.duration:.2f}s  {a.reply}"
            )


@queue_group.command("show")
@click.argument("message_id")
@spool_option
def queue_show(message_id: str, spool_dir: str) -> None:
    """One message: envelope, recipients with state and last reply, attempt history."""
    from relay.scheduler import admin

    async def action(spool: Spool) -> MessageMeta | None:
        return admin.inspect(spool, message_id)

    found = [(shard, meta) for shard, meta in _on_each_shard(spool_dir, action) if meta]
    if not found:
        raise click.ClickException(f"no message {message_id} in {spool_dir}")
    for shard, meta in found:
        _print_message(shard, meta)


@queue_group.command("retry")
@spool_option
@_filter_options
def queue_retry(spool_dir: str, **filters: object) -> None:
    """Make the selected messages due now."""
    from relay.scheduler import admin

    selection = _message_filter(**filters)  # type: ignore[arg-type]

    async def action(spool: Spool) -> int:
        return len(await admin.retry_now(spool, selection))

    for shard, count in _on_each_shard(spool_dir, action):
        click.echo(f"spool {shard}: {count} messages due now")


@queue_group.command("delete")
@spool_option
@_filter_options
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def queue_delete(spool_dir: str, yes: bool, **filters: object) -> None:
    """Remove the selected messages without notice (no bounce)."""
    from relay.scheduler import admin

    selection = _message_filter(**filters)  # type: ignore[arg-type]
    if not yes:
        click.confirm("Delete the selected messages without notice?", abort=True)

    async def action(spool: Spool) -> int:
        return await admin.delete(spool, selection, everything=True)

    for shard, count in _on_each_shard(spool_dir, action):
        click.echo(f"spool {shard}: {count} messages deleted")


@queue_group.command("bounce")
@spool_option
@_filter_options
@click.option("--reason", default="", help="Text added to the bounce reply.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def queue_bounce(spool_dir: str, reason: str, yes: bool, **filters: object) -> None:
    """Bounce the selected pending recipients (the running relay sends the DSNs)."""
    from relay.scheduler import admin

    selection = _message_filter(**filters)  # type: ignore[arg-type]
    if not yes:
        click.confirm("Bounce the selected recipients?", abort=True)

    async def action(spool: Spool) -> int:
        return await admin.bounce(spool, selection, reason=reason, everything=True)

    for shard, count in _on_each_shard(spool_dir, action):
        click.echo(f"spool {shard}: {count} recipients bounced")


def _suspension_target(domain: str | None, tenant: str | None) -> tuple[str, str]:
    if (domain is None) == (tenant is None):
        raise click.UsageError("name exactly one of --domain or --tenant")
    return ("domain", domain) if domain is not None else ("tenant", tenant or "")


@queue_group.command("suspend")
@spool_option
@click.option("--domain", help="Recipient domain to hold back.")
@click.option("--tenant", help="Tenant to hold back.")
@click.option("--reason", default="", help="Why (shown in the summary).")
@click.option("--for", "duration", help="Lift by itself after this long (e.g. 30m, 2h).")
def queue_suspend(
    spool_dir: str, domain: str | None, tenant: str | None, reason: str, duration: str | None
) -> None:
    """Hold back the mail of a domain or a tenant until resumed."""
    from relay.scheduler import admin

    kind, name = _suspension_target(domain, tenant)
    seconds = None if duration is None else _parse_duration(duration)

    async def action(spool: Spool) -> None:
        await admin.suspend(spool, kind, name, reason=reason, duration=seconds)  # type: ignore[arg-type]

    for shard, _ in _on_each_shard(spool_dir, action):
        click.echo(f"spool {shard}: {kind} {name} suspended")


@queue_group.command("resume")
@spool_option
@click.option("--domain", help="Recipient domain to release.")
@click.option("--tenant", help="Tenant to release.")
def queue_resume(spool_dir: str, domain: str | None, tenant: str | None) -> None:
    """Lift the suspension of a domain or a tenant."""
    from relay.scheduler import admin

    kind, name = _suspension_target(domain, tenant)

    async def action(spool: Spool) -> bool:
        return await admin.resume(spool, kind, name)  # type: ignore[arg-type]

    for shard, lifted in _on_each_shard(spool_dir, action):
        state = "resumed" if lifted else "was not suspended"
        click.echo(f"spool {shard}: {kind} {name} {state}")


# ======================================================================================
# end of relay queue
# ======================================================================================


# ======================================================================================
# relay bench: load benchmarking tools (owner: loadgen; relay.loadgen does the work)
#
# `relay bench sink` is a fast fake MX (faults, receiver policy, records, --workers N
# on one port); `relay bench send` a load generator for any SMTP server.  Both keep
# stdout for the JSON result and write progress to stderr.
# ======================================================================================

import contextlib  # noqa: E402 -- this section keeps its imports to itself
import functools  # noqa: E402
from collections.abc import Mapping  # noqa: E402
from typing import Any  # noqa: E402


def _bench_error(exc: BaseException) -> click.ClickException:
    """A one-line error from an exception (trio nurseries wrap a lone error in a group)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return click.ClickException(str(exc) or type(exc).__name__)


@main.group("bench")
def bench_group() -> None:
    """Load benchmarking: a fake MX (sink) and a load generator (send)."""


@bench_group.command("sink")
@click.option("--host", default="127.0.0.1", show_default=True, help="IP address to listen on.")
@click.option("--port", default=2525, show_default=True, type=int, help="0: a free port.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 256))
@click.option("--hostname", default="sink.test", show_default=True, help="Name in replies.")
@click.option("--no-pipelining", is_flag=True, help="Do not announce PIPELINING.")
@click.option("--starttls", is_flag=True, help="Offer STARTTLS.")
@click.option("--implicit-tls", is_flag=True, help="TLS from the first byte (as port 465).")
@click.option("--cert", type=click.Path(dir_okay=False, exists=True), help="PEM certificate.")
@click.option("--key", type=click.Path(dir_okay=False, exists=True), help="PEM private key.")
@click.option(
    "--auth", "auth_users", multiple=True, help="USER:PASSWORD (repeatable): require AUTH."
)
@click.option("--max-size", default="64m", show_default=True, help="Message size limit.")
@click.option(
    "--fault",
    "fault_specs",
    multiple=True,
    help="STAGE:KIND=VALUE, e.g. rcpt:4xx=0.01, data:delay=0.1.",
)
@click.option("--disconnect-after", default=0, type=int, help="421 and close after N messages.")
@click.option("--tarpit", default=0.0, type=float, help="Seconds between reply bytes.")
@click.option("--seed", type=int, help="Seed of the fault RNG (reproducible runs).")
@click.option(
    "--max-conn-per-client", default=0, type=int, help="Concurrent connections (421 4.7.0)."
)
@click.option(
    "--max-msgs-per-conn", default=0, type=int, help="Messages per connection (421 4.7.0)."
)
@click.option("--max-rate", default=0.0, type=float, help="Messages/s per client (450 4.7.1).")
@click.option("--rate-burst", default=0, type=int, help="Token bucket size for --max-rate.")
@click.option(
    "--records-out", type=click.Path(dir_okay=False), help="CSV of every accepted message."
)
@click.option("--json-out", type=click.Path(dir_okay=False), help="Also write the summary here.")
@click.option("--interval", default=5.0, show_default=True, type=float, help="Status line period.")
@click.option("--duration", type=float, help="Stop after this many seconds (default: on signal).")
@click.option("--quiet", is_flag=True, help="No status lines on stderr.")
def bench_sink(
    host: str,
    port: int,
    workers: int,
    hostname: str,
    no_pipelining: bool,
    starttls: bool,
    implicit_tls: bool,
    cert: str | None,
    key: str | None,
    auth_users: tuple[str, ...],
    max_size: str,
    fault_specs: tuple[str, ...],
    disconnect_after: int,
    tarpit: float,
    seed: int | None,
    max_conn_per_client: int,
    max_msgs_per_conn: int,
    max_rate: float,
    rate_burst: int,
    records_out: str | None,
    json_out: str | None,
    interval: float,
    duration: float | None,
    quiet: bool,
) -> None:
    """A fast fake MX: accept, count and discard mail until SIGINT/SIGTERM.

    Prints "sink: listening on HOST:PORT" on stderr when ready, a status line every
    --interval seconds, and the JSON summary on stdout at exit.
    """
    import json
    from pathlib import Path

    from relay.loadgen import ReceiverPolicy, SinkConfig
    from relay.loadgen.console import sink_status_line
    from relay.loadgen.options import build_faults, parse_credentials, parse_size
    from relay.loadgen.sinkrun import run_sink, write_records
    from relay.log import configure_logging

    configure_logging("error")
    try:
        config = SinkConfig(
            host=host,
            port=port,
            hostname=hostname,
            pipelining=not no_pipelining,
            starttls=starttls,
            implicit_tls=implicit_tls,
            cert_file=Path(cert) if cert else None,
            key_file=Path(key) if key else None,
            auth_users=dict(parse_credentials(u) for u in auth_users),
            max_message_size=parse_size(max_size),
            faults=build_faults(
                fault_specs, disconnect_after=disconnect_after, tarpit=tarpit, seed=seed
            ),
            policy=ReceiverPolicy(
                max_connections_per_client=max_conn_per_client,
                max_messages_per_connection=max_msgs_per_conn,
                max_message_rate=max_rate,
                rate_burst=rate_burst,
            ),
            record=records_out is not None,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None

    previous: list[dict[str, object]] = []

    def ready(bound: int) -> None:
        click.echo(f"sink: listening on {host}:{bound} ({workers} worker(s))", err=True)

    def status(stats: Mapping[str, Any]) -> None:
        if not quiet:
            click.echo(sink_status_line(stats, previous[-1] if previous else None), err=True)
        previous[:] = [dict(stats)]

    try:
        result = run_sink(
            config,
            workers=workers,
            interval=interval,
            duration=duration,
            on_status=status,
            on_ready=ready,
        )
    except (OSError, RuntimeError, TimeoutError, EOFError, BaseExceptionGroup) as exc:
        raise _bench_error(exc) from None
    summary = json.dumps(result.to_json(), indent=2)
    if json_out:
        Path(json_out).write_text(summary + "\n")
    if records_out:
        write_records(Path(records_out), result)
    click.echo(summary)


@bench_group.command("send")
@click.argument("target")
@click.option("--sessions", default=10, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--messages", type=click.IntRange(0), help="Messages in total (default 1000).")
@click.option("--duration", type=float, help="Send for this many seconds instead.")
@click.option("--time-limit", default=3600.0, show_default=True, type=float, help="Hard cap (s).")
@click.option("--size", default="5k", show_default=True, help="Message size: 5120, 5k, 1m.")
@click.option("--recipients", default=1, show_default=True, type=click.IntRange(1, 1000))
@click.option(
    "--domains", default="example.test", show_default=True, help='e.g. "a.test:3,b.test:1"'
)
@click.option("--from", "sender", default="bench@loadgen.test", show_default=True)
@click.option("--messages-per-connection", default=0, type=click.IntRange(0), help="0: unlimited.")
@click.option("--auth", "credentials", help="USER:PASSWORD for AUTH PLAIN (or LOGIN).")
@click.option("--starttls", is_flag=True, help="Use STARTTLS.")
@click.option("--tls", "implicit_tls", is_flag=True, help="Implicit TLS (port 465 style).")
@click.option("--cafile", type=click.Path(dir_okay=False, exists=True), help="Verify against it.")
@click.option("--tls-hostname", help="Name to verify (default: the target host).")
@click.option("--no-pipelining", is_flag=True, help="One command per round trip.")
@click.option("--rate", default=0.0, type=float, help="Cap in messages/s (0: none).")
@click.option("--helo", default="loadgen.test", show_default=True, help="EHLO name.")
@click.option("--timeout", default=60.0, show_default=True, type=float, help="Per reply (s).")
@click.option("--run-id", help="Prefix of the X-Bench-Id values (default: random).")
@click.option(
    "--ids-out", type=click.Path(dir_okay=False), help="CSV: bench_id,accepted_at,queue_id."
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def bench_send(
    target: str,
    sessions: int,
    messages: int | None,
    duration: float | None,
    time_limit: float,
    size: str,
    recipients: int,
    domains: str,
    sender: str,
    messages_per_connection: int,
    credentials: str | None,
    starttls: bool,
    implicit_tls: bool,
    cafile: str | None,
    tls_hostname: str | None,
    no_pipelining: bool,
    rate: float,
    helo: str,
    timeout: float,
    run_id: str | None,
    ids_out: str | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Load any SMTP server at TARGET (IP:PORT; names are never resolved).

    Each message carries a unique X-Bench-Id; the report gives messages/s, MB/s,
    latency percentiles from the end of DATA to the 250, and errors by reply.
    """
    import csv
    import json
    from pathlib import Path

    from rich.console import Console

    from relay.loadgen.console import SendProgressBar, print_send_report
    from relay.loadgen.message import parse_domain_mix
    from relay.loadgen.options import parse_credentials, parse_size, parse_target
    from relay.loadgen.send import run_send
    from relay.loadgen.sendconfig import SendConfig, new_run_id
    from relay.loadgen.sendreport import AcceptedMessage
    from relay.log import configure_logging

    configure_logging("error")
    if starttls and implicit_tls:
        raise click.BadParameter("choose --starttls or --tls, not both")
    try:
        host, port = parse_target(target)
        config = SendConfig(
            host=host,
            port=port,
            sessions=sessions,
            messages=messages,
            duration=duration,
            time_limit=time_limit,
            size=parse_size(size),
            recipients=recipients,
            domains=parse_domain_mix(domains),
            sender=sender,
            messages_per_connection=messages_per_connection,
            auth=parse_credentials(credentials) if credentials else None,
            tls="starttls" if starttls else "implicit" if implicit_tls else "none",
            cafile=Path(cafile) if cafile else None,
            tls_hostname=tls_hostname,
            pipelining=not no_pipelining,
            rate=rate,
            helo=helo,
            reply_timeout=timeout,
            run_id=run_id or new_run_id(),
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None

    with contextlib.ExitStack() as stack:
        on_accepted = None
        if ids_out:
            ids_file = stack.enter_context(Path(ids_out).open("w", newline=""))
            writer = csv.writer(ids_file)
            writer.writerow(["bench_id", "accepted_at", "queue_id"])

            def on_accepted(message: AcceptedMessage) -> None:
                writer.writerow([message.bench_id, f"{message.accepted_at:.6f}", message.queue_id])

        bar = stack.enter_context(
            SendProgressBar(config.total, config.duration, enabled=not quiet and not as_json)
        )
        try:
            report = trio.run(
                functools.partial(run_send, config, on_progress=bar.update, on_accepted=on_accepted)
            )
        except (OSError, BaseExceptionGroup) as exc:
            raise _bench_error(exc) from None
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        print_send_report(report, Console())
    if report.aborted:
        raise click.ClickException(f"run aborted: {report.aborted}")


# ======================================================================================
# end of relay bench
# ======================================================================================


# ======================================================================================
# relay serve: the server (listeners, scheduler, delivery) — one process per shard
# ======================================================================================


@main.command("serve")
@config_option
@data_dir_option
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=None,
    help="Shard processes sharing the ports (0 = one per core; default: server.workers).",
)
@click.option("--shard", type=click.IntRange(min=0), default=None, hidden=True)
@click.option("--shards", type=click.IntRange(min=1), default=1, hidden=True)
def serve(
    config_file: str | None,
    data_dir: str | None,
    workers: int | None,
    shard: int | None,
    shards: int,
) -> None:
    """Run relay: submission listeners, scheduler and delivery (embedded defaults
    without --config: loopback listeners, data under ./relay-data)."""
    from relay.app import run_shard
    from relay.log import configure_logging
    from relay.supervisor import default_workers, supervise

    cfg = _load_cli_config(config_file, data_dir)
    configure_logging(cfg.server.log_level, json=cfg.server.log_json)
    if shard is not None:
        if shard >= shards:
            raise click.BadParameter("--shard must be below --shards")
        trio.run(lambda: run_shard(cfg, shard=shard, shards=shards))
        return
    count = cfg.server.workers if workers is None else workers
    count = count or default_workers()
    if count == 1:
        trio.run(lambda: run_shard(cfg))
        return
    base: list[str] = []
    if config_file:
        base += ["--config", config_file]
    if data_dir:
        base += ["--data-dir", data_dir]
    raise SystemExit(supervise(base, count, grace=cfg.server.shutdown_grace))


# ======================================================================================
# relay demo: the README's run command
# ======================================================================================


@main.command("demo")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False),
    default="relay-demo",
    show_default=True,
    help="Working directory (wiped first).",
)
@click.option(
    "--messages", type=click.IntRange(min=1, max=1_000_000), default=2000, show_default=True
)
@click.option("--sessions", type=click.IntRange(min=1, max=1000), default=20, show_default=True)
@click.option("--workers", type=click.IntRange(min=1, max=64), default=2, show_default=True)
@click.option("--size", type=click.IntRange(min=100), default=5120, show_default=True)
def demo(directory: str, messages: int, sessions: int, workers: int, size: int) -> None:
    """Start relay with a route to a local fake MX, submit a batch over authenticated
    SMTP, wait until every message is delivered, print a summary (loopback only)."""
    from pathlib import Path

    from relay.demo import print_summary, run_demo
    from relay.log import configure_logging

    configure_logging("warning")  # the sink's own info lines would drown the summary

    result = trio.run(
        lambda: run_demo(
            Path(directory), messages=messages, sessions=sessions, workers=workers, size=size
        )
    )
    print_summary(result)
    if result.accepted != messages or result.delivered < result.accepted:
        raise SystemExit(1)


# ======================================================================================
# relay dkim: signing keys (owner: dkim; relay.dkim does the work)
# ======================================================================================


@main.group("dkim")
def dkim_group() -> None:
    """DKIM signing keys (RFC 6376; Ed25519 per RFC 8463)."""


@dkim_group.command("keygen")
@click.argument("domain")
@click.argument("selector")
@click.option(
    "--algorithm",
    type=click.Choice(["rsa", "ed25519"]),
    default="rsa",
    show_default=True,
    help="rsa (rsa-sha256) or ed25519 (ed25519-sha256).",
)
@click.option(
    "--bits", type=click.IntRange(1024, 4096), default=2048, show_default=True, help="RSA key size."
)
@click.option(
    "--dir",
    "key_dir",
    type=click.Path(file_okay=False),
    default="dkim-keys",
    show_default=True,
    help="Key directory (dkim.key_dir); the key goes to DIR/DOMAIN/SELECTOR.ALGORITHM.pem.",
)
def dkim_keygen(domain: str, selector: str, algorithm: str, bits: int, key_dir: str) -> None:
    """Write a new private key for DOMAIN and SELECTOR; print the DNS TXT record.

    The record goes to stdout as a zone-file line; where the key went goes to
    stderr.  An existing key file is never overwritten.
    """
    from relay import dkim

    try:
        name = dkim.check_domain(domain)
        dkim.check_selector(selector)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    alg: dkim.Algorithm = "rsa-sha256" if algorithm == "rsa" else "ed25519-sha256"
    key = dkim.generate_private_key(alg, bits)
    path = dkim.key_path(key_dir, name, selector, alg)
    try:
        dkim.write_private_key(path, key)
    except FileExistsError:
        raise click.ClickException(f"{path} exists: choose another selector") from None
    except OSError as exc:
        raise click.ClickException(f"cannot write {path}: {exc.strerror or exc}") from None
    click.echo(f"private key written to {path} (readable by its owner only)", err=True)
    click.echo(f"publish this TXT record at {selector}._domainkey.{name}:", err=True)
    click.echo(dkim.dns_zone_record(selector, name, dkim.dns_txt_value(key)))


# ======================================================================================
# end of relay dkim
# ======================================================================================


# ======================================================================================
# relay config: configuration files (owner: config)
# ======================================================================================


@main.group("config")
def config_group() -> None:
    """Configuration files."""


@config_group.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
def config_check(file: str) -> None:
    """Validate FILE, with the RELAY_* environment overrides, without starting.

    Also loads what the file points to: the TLS certificate and key, and the DKIM
    keys.  Exit status 0 and a short summary when all is well; 1 and the error,
    naming the key and the file, when not.
    """
    from relay.dkim import build_signer
    from relay.log import configure_logging

    configure_logging("warning")
    try:
        cfg = load_config(file)
        if cfg.tls.cert_file:
            from relay.net import server_context

            try:
                server_context(cfg.tls.cert_file, cfg.tls.key_file)
            except ConfigError as exc:
                raise ConfigError(f"{cfg.source}: tls.cert_file: {exc}") from None
        signer = build_signer(cfg)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    server, submission = cfg.server, cfg.submission
    click.echo(f"{cfg.source}: valid")
    click.echo(
        f"  server: hostname {server.hostname}, data_dir {server.data_dir}, "
        f"workers {server.workers or 'one per core'}, shutdown_grace {server.shutdown_grace:g}s"
    )
    click.echo(
        f"  submission: listen {', '.join(submission.listen) or '-'}; "
        f"listen_tls {', '.join(submission.listen_tls) or '-'}"
    )
    api = cfg.api
    click.echo(f"  api: {'listen ' + ', '.join(api.listen) if api.enabled else 'off'}")
    click.echo(f"  tls: {cfg.tls.cert_file or 'self-signed certificate (generated)'}")
    click.echo(f"  routes: {len(cfg.routes)}; egress sources: {len(cfg.egress)}")
    if signer is None:
        click.echo("  dkim: off (no keys configured)")
    else:
        keys = sum(len(signer.keys_for(d)) for d in signer.domains)
        click.echo(f"  dkim: {keys} key(s) for {len(signer.domains)} domain(s)")


# ======================================================================================
# end of relay config
# ======================================================================================


# ======================================================================================
# relay key: API keys of the HTTP API (owner: api)
# ======================================================================================


def _with_api_keys(cfg: Config, action: Callable[[ApiKeyStore], Awaitable[T]]) -> T:
    from relay.api.keys import ApiKeyError, ApiKeyStore

    return _with_accounts(
        cfg, lambda spool: action(ApiKeyStore(spool.aux("apikeys"))), (ApiKeyError,)
    )


@main.group("key")
def key_group() -> None:
    """Manage API keys of the HTTP send API (Authorization: Bearer ...)."""


@key_group.command("create")
@click.option("--tenant", required=True, help="The tenant the key sends for.")
@click.option(
    "--domains",
    required=True,
    help="Comma-separated sender domains ('.example.com' allows subdomains, '*' any).",
)
@click.option(
    "--rate",
    "rate_per_minute",
    type=click.IntRange(min=0),
    default=0,
    help="Messages per minute (0 = unlimited).",
)
@click.option("--description", default="", help="A note shown by 'relay key list'.")
@config_option
@data_dir_option
def key_create(
    tenant: str,
    domains: str,
    rate_per_minute: int,
    description: str,
    config_file: str | None,
    data_dir: str | None,
) -> None:
    """Create a key and print it once (only its hash is stored)."""
    cfg = _load_cli_config(config_file, data_dir)
    names = [d.strip() for d in domains.split(",") if d.strip()]
    key, token = _with_api_keys(
        cfg,
        lambda store: store.create(
            tenant, names, rate_per_minute=rate_per_minute, description=description
        ),
    )
    click.echo(
        f"created API key {key.id} for tenant {key.tenant}: {', '.join(key.domains)}", err=True
    )
    click.echo("the key is shown once; store it now:", err=True)
    click.echo(token)


@key_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@config_option
@data_dir_option
def key_list(as_json: bool, config_file: str | None, data_dir: str | None) -> None:
    """List API keys (never the keys themselves)."""
    import json
    from datetime import UTC, datetime

    cfg = _load_cli_config(config_file, data_dir)

    async def listing(store: ApiKeyStore) -> list[ApiKey]:
        return store.list()

    keys = _with_api_keys(cfg, listing)
    if as_json:
        rows = [
            {
                "id": k.id,
                "tenant": k.tenant,
                "domains": list(k.domains),
                "rate_per_minute": k.rate_per_minute,
                "created": k.created,
                "description": k.description,
            }
            for k in keys
        ]
        click.echo(json.dumps(rows, indent=2))
        return
    if not keys:
        click.echo("no API keys")
        return
    for k in keys:
        created = datetime.fromtimestamp(k.created, UTC).strftime("%Y-%m-%d %H:%M")
        rate = f"{k.rate_per_minute}/min" if k.rate_per_minute else "unlimited"
        note = f"  ({k.description})" if k.description else ""
        click.echo(f"{k.id}  {k.tenant}  {','.join(k.domains)}  {rate}  {created}Z{note}")


@key_group.command("revoke")
@click.argument("key_id")
@config_option
@data_dir_option
def key_revoke(key_id: str, config_file: str | None, data_dir: str | None) -> None:
    """Revoke a key at once, on every shard."""
    cfg = _load_cli_config(config_file, data_dir)
    _with_api_keys(cfg, lambda store: store.revoke(key_id))
    click.echo(f"revoked API key {key_id}")


# ======================================================================================
# end of relay key
# ======================================================================================

if __name__ == "__main__":  # pragma: no cover
    main()
