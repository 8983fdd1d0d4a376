"""Parsers of ``COWRIE_STATS_*`` variables and the reading of their text from the environment.

A parser turns a variable's text into its typed value (type, range or choices), or
raises :class:`SettingsError`, one line naming the variable. Every variable but a file
path also has a ``*_FILE`` twin that reads the value from a file (Docker and Kubernetes
secrets), refused when others may read it. The table of settings is
:mod:`cowrie_stats.settings_table`.
"""

from __future__ import annotations

import os
import stat
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

PREFIX = "COWRIE_STATS_"

T_co = TypeVar("T_co", covariant=True)


class SettingsError(ValueError):
    """A configuration value is missing or invalid."""


# -- parsers: text of a variable -> typed value, or one line naming the variable ----------


class Parser(ABC, Generic[T_co]):
    """Turns a variable's text into its value; ``describe`` is its allowed range, if any."""

    #: Whether the value may come from a ``*_FILE`` twin (file paths are read as given).
    file_variant = True

    @abstractmethod
    def parse(self, variable: str, raw: str) -> T_co:
        """The value, or SettingsError: one line naming ``variable``."""

    def describe(self) -> str:
        return ""


@dataclass(frozen=True)
class Text(Parser[str]):
    def parse(self, variable: str, raw: str) -> str:
        return raw


@dataclass(frozen=True)
class Integer(Parser[int]):
    minimum: int
    maximum: int

    def parse(self, variable: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{variable}: expected an integer, got {raw!r}") from None
        if not self.minimum <= value <= self.maximum:
            raise SettingsError(f"{variable}: {value} is outside {self.minimum}..{self.maximum}")
        return value

    def describe(self) -> str:
        return f"{self.minimum}..{self.maximum}"


@dataclass(frozen=True)
class Number(Parser[float]):
    minimum: float

    def parse(self, variable: str, raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(f"{variable}: expected a number, got {raw!r}") from None
        if not value >= self.minimum:  # NaN too
            raise SettingsError(f"{variable}: {value} is below {self.minimum}")
        return value

    def describe(self) -> str:
        return f">= {self.minimum:g}"


@dataclass(frozen=True)
class Choice(Parser[str]):
    choices: tuple[str, ...]
    upper: bool = False  # log levels are upper case, everything else lower

    def parse(self, variable: str, raw: str) -> str:
        stripped = raw.strip()
        value = stripped.upper() if self.upper else stripped.lower()
        if value not in self.choices:
            raise SettingsError(f"{variable}: {stripped!r} is not one of {', '.join(self.choices)}")
        return value


@dataclass(frozen=True)
class Flag(Parser[bool]):
    def parse(self, variable: str, raw: str) -> bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{variable}: expected true or false, got {raw!r}")


@dataclass(frozen=True)
class ReadableFile(Parser[str]):
    """A path to an existing file; ``private``: refused when others may read it."""

    private: bool = False
    file_variant = False

    def parse(self, variable: str, raw: str) -> str:
        if not Path(raw).is_file():
            raise SettingsError(f"{variable}: {raw} is not a readable file")
        if self.private:
            check_private_file(Path(raw), variable)
        return raw


@dataclass(frozen=True)
class DatabaseUrl(Parser[str]):
    """A SQLite or PostgreSQL URL, with psycopg 3 as the PostgreSQL driver."""

    def parse(self, variable: str, raw: str) -> str:
        try:
            url = make_url(raw)
        except ArgumentError:
            raise SettingsError(f"{variable}: not a database URL") from None
        if url.get_backend_name() not in ("sqlite", "postgresql"):
            raise SettingsError(f"{variable}: only sqlite and postgresql are supported")
        if url.get_backend_name() == "postgresql" and url.drivername == "postgresql":
            url = url.set(drivername="postgresql+psycopg")  # psycopg 3 is our only driver
        return url.render_as_string(hide_password=False)


@dataclass(frozen=True)
class DatabaseUrls(Parser[tuple[str, ...]]):
    """Comma-separated database URLs."""

    def parse(self, variable: str, raw: str) -> tuple[str, ...]:
        parts = (part.strip() for part in raw.split(","))
        return tuple(DatabaseUrl().parse(variable, part) for part in parts if part)


# -- a variable's text: from the environment, or from its *_FILE twin -------------------


def check_private_file(path: Path, variable: str | None = None) -> None:
    """Refuse a secret file that others may read: one clear line, as for ``.env``.

    A file is private when only its owner may read it, or its group too when that
    group is one of this process's own and may only read (Kubernetes mounts Secrets
    with the pod's fsGroup, mode 0440; the process runs in that group).
    Raises OSError when the file cannot be looked at.
    """
    info = path.stat()
    mode = stat.S_IMODE(info.st_mode)
    own_group = info.st_gid == os.getegid() or info.st_gid in os.getgroups()
    shared = stat.S_IRWXO | (stat.S_IWGRP | stat.S_IXGRP if own_group else stat.S_IRWXG)
    if mode & shared:
        where = f"{variable}: {path}" if variable else str(path)
        raise SettingsError(
            f"{where} is readable by group or others (mode {mode:o}); run: chmod 600 {path}"
        )


def read_secret_file(name: str, path: str) -> str:
    try:
        check_private_file(Path(path), name)
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SettingsError(f"{name}: cannot read {path}: {exc.strerror}") from exc


def env_text(env: Mapping[str, str], key: str) -> str | None:
    """Value of COWRIE_STATS_<key>, or the content of the file named by <key>_FILE."""
    name = PREFIX + key
    file_name = name + "_FILE"
    if name in env and file_name in env:
        raise SettingsError(f"set either {name} or {file_name}, not both")
    if file_name in env:
        return read_secret_file(file_name, env[file_name])
    value = env.get(name)
    return value if value not in (None, "") else None


def env_flag(env: Mapping[str, str], key: str, default: bool) -> bool:
    """COWRIE_STATS_<key> (or its ``*_FILE`` twin) as true or false; ``default`` when unset."""
    raw = env_text(env, key)
    return default if raw is None else Flag().parse(PREFIX + key, raw)
