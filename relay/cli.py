"""The `relay` command: one entry point with subcommands."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import TypeVar

import click
import trio

from relay import __version__
from relay.config import Config, accounts_dir, load_config
from relay.errors import ConfigError
from relay.submission.users import User, UserError, UserStore, generate_password

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


def _with_users(cfg: Config, action: Callable[[UserStore], Awaitable[T]]) -> T:
    from relay.spool import open_spool

    async def run() -> T:
        accounts_dir(cfg).mkdir(parents=True, exist_ok=True)
        async with open_spool(accounts_dir(cfg)) as spool:
            return await action(UserStore(spool.aux("users")))

    try:
        return trio.run(run)
    except UserError as exc:
        raise click.ClickException(str(exc)) from None


def _read_password(password_stdin: bool) -> tuple[str, bool]:
    """The password from stdin, or a generated one (True when generated)."""
    if password_stdin:
        password = click.get_text_stream("stdin").readline().rstrip("\r\n")
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


if __name__ == "__main__":  # pragma: no cover
    main()
