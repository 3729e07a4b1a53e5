"""The `relay` command: one entry point with subcommands."""

from __future__ import annotations

import click

from relay import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="relay")
def main() -> None:
    """relay: a high-throughput bulk-sending SMTP relay."""


@main.command("info")
def info() -> None:
    """Show which fastparse implementation is in use."""
    from relay import fastparse

    click.echo(f"relay {__version__}; fastparse implementation: {fastparse.IMPLEMENTATION}")


if __name__ == "__main__":  # pragma: no cover
    main()
