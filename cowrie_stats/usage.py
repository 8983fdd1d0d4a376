"""The end of every subcommand's ``--help``: the variables it reads, exit statuses, an example.

A server command's variables are the rows of the settings table tagged with the
command (:data:`cowrie_stats.settings.SETTINGS_TABLE`), named in full with their
defaults; the client commands' come from ``ClientSettings.VARIABLES``.
"""

from __future__ import annotations

import argparse
import textwrap
from typing import TYPE_CHECKING

from cowrie_stats.settings import SETTINGS_TABLE, SettingRow

if TYPE_CHECKING:
    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]

ENV_NOTE = "(defaults and details: .env.example; a private ./.env is read too)"
NAME_WIDTH = 40
LINE_WIDTH = 100


def help_row(name: str, meaning: str) -> str:
    """``  NAME  meaning``, the meaning wrapped in its column (below a name too long for it)."""
    indent = " " * (NAME_WIDTH + 3)
    head = f"  {name:<{NAME_WIDTH}} " if len(name) <= NAME_WIDTH else f"  {name}\n{indent}"
    return head + textwrap.fill(
        meaning, LINE_WIDTH, initial_indent=indent, subsequent_indent=indent
    ).removeprefix(indent)


def setting_line(row: SettingRow) -> str:
    """One setting: variable (``/ _FILE`` for a secret), help, default and range."""
    name = row.variable + (" / _FILE" if row.spec.secret else "")
    default = f"default {row.shown_default}" if row.shown_default else ""
    bounds = ", ".join(part for part in (default, row.spec.parser.describe()) if part)
    return help_row(name, f"{row.spec.help} ({bounds})" if bounds else row.spec.help)


def environment(command: str, *extra: str) -> str:
    """The settings ``command`` reads, from the table (and ``extra`` rows last)."""
    rows = [setting_line(row) for row in SETTINGS_TABLE if command in row.spec.commands]
    return "\n".join([*rows, *extra]) + "\n"


DATABASE_ENV = environment("migrate")
SERVE_ENV = environment("serve")
NONE = "  (none)"
EXIT_CODES = "exit status: 0 done, 1 runtime failure (named), 2 configuration or usage error"


def client_environment(*extra: str) -> str:
    """The variables of `query` and `healthcheck` (and ``extra`` rows first)."""
    from cowrie_stats.client import ClientSettings

    rows = [*extra, *(f"  {n:<40} {m}" for n, m in ClientSettings.VARIABLES.items())]
    return "\n".join(rows)


def epilog(environment: str, example: str, exits: str = EXIT_CODES) -> str:
    return f"environment {ENV_NOTE}:\n{environment.rstrip()}\n\n{exits}\n\nexample:\n  {example}"


def subcommand(
    sub: Subcommands,
    name: str,
    summary: str,
    description: str,
    ending: tuple[str, str] | tuple[str, str, str],
    **options: object,
) -> argparse.ArgumentParser:
    """A subcommand whose help ends in (variables, example[, exit statuses])."""
    return sub.add_parser(
        name,
        help=summary,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=epilog(*ending),
        **options,  # type: ignore[arg-type]
    )
