"""Rows of the per-event tables and their first-use flags (no database).

A row is flagged for a value when it is its session's first row with that value,
by (ts_us, event_hash), counting the rows stored before: a stored first row
that a new row precedes loses its flag. Order-independent, like the session
merge, so any split of the logs into files and batches flags the same rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from cowrie_stats.db.models import FIRST_USE_FLAGS, VALUE_KINDS
from cowrie_stats.ingest.parse import (
    COMMAND_INPUT,
    FILE_DOWNLOAD,
    LOGIN_FAILED,
    LOGIN_SUCCESS,
    ParsedEvent,
)

USERNAME, PASSWORD, INPUT, SHASUM, CREDENTIAL, SRC_IP = (
    VALUE_KINDS[name]
    for name in ("username", "password", "input", "shasum", "credential", "src_ip")
)


class LoginRow(NamedTuple):
    event_hash: bytes
    sensor_id: int
    session_id: int
    ts_us: int
    username: str | None
    password: str | None
    username_id: int | None
    password_id: int | None
    credential_id: int | None
    success: bool
    username_first: bool = False
    password_first: bool = False


class CommandRow(NamedTuple):
    event_hash: bytes
    sensor_id: int
    session_id: int
    ts_us: int
    input: str
    input_id: int
    input_first: bool = False


class DownloadRow(NamedTuple):
    event_hash: bytes
    sensor_id: int
    session_id: int
    ts_us: int
    shasum: str
    url: str | None
    outfile: str | None
    shasum_id: int
    shasum_first: bool = False


DetailRow = LoginRow | CommandRow | DownloadRow


# A credential's dictionary text: the username with \x01 escaped as \x01\x02, then
# \x01\x01, then the password. Bytewise, these texts sort exactly as the (username,
# password) pairs do (the separator sorts below any character a username goes on
# with), and PostgreSQL text can hold them (it cannot hold a NUL).
CREDENTIAL_ESCAPE = ("\x01", "\x01\x02")
CREDENTIAL_SEPARATOR = "\x01\x01"


def credential(username: str | None, password: str | None) -> str | None:
    """The dictionary text of a (username, password) pair; :func:`split_credential` undoes it."""
    if username is None or password is None:
        return None
    return username.replace(*CREDENTIAL_ESCAPE) + CREDENTIAL_SEPARATOR + password


def split_credential(text: str) -> tuple[str, str]:
    username, _, password = text.partition(CREDENTIAL_SEPARATOR)
    return username.replace(CREDENTIAL_ESCAPE[1], CREDENTIAL_ESCAPE[0]), password


def counted_values(events: Iterable[ParsedEvent]) -> set[tuple[int, str]]:
    """The (kind, text) values ``events`` add to the dictionary (source IPs included)."""
    values: set[tuple[int, str]] = set()
    add = values.add
    for e in events:
        if e.src_ip is not None:
            add((SRC_IP, e.src_ip))
        eventid = e.eventid
        if eventid in (LOGIN_SUCCESS, LOGIN_FAILED):
            if e.username is not None:
                add((USERNAME, e.username))
            if e.password is not None:
                add((PASSWORD, e.password))
            pair = credential(e.username, e.password)
            if pair is not None:
                add((CREDENTIAL, pair))
        elif eventid == COMMAND_INPUT:
            add((INPUT, e.command or ""))
        elif eventid == FILE_DOWNLOAD and e.shasum is not None:
            add((SHASUM, e.shasum))
    return values


@dataclass
class DetailRows:
    logins: list[LoginRow]
    commands: list[CommandRow]
    downloads: list[DownloadRow]

    def by_table(self) -> dict[str, Sequence[DetailRow]]:
        return {
            "login_attempts": self.logins,
            "commands": self.commands,
            "downloads": self.downloads,
        }


def detail_rows(
    events: Sequence[ParsedEvent],
    sensor_ids: Mapping[str, int],
    session_ids: Mapping[tuple[int, str], int],
    value_ids: Mapping[tuple[int, str], int],
) -> DetailRows:
    """The per-event rows of ``events`` (flags not set yet)."""
    rows = DetailRows([], [], [])
    for e in events:
        sensor_id = sensor_ids[e.sensor]
        common = (e.hash, sensor_id, session_ids[(sensor_id, e.session)], e.ts_us)
        eventid = e.eventid
        if eventid in (LOGIN_SUCCESS, LOGIN_FAILED):
            pair = credential(e.username, e.password)
            rows.logins.append(
                LoginRow(
                    *common,
                    e.username,
                    e.password,
                    None if e.username is None else value_ids[(USERNAME, e.username)],
                    None if e.password is None else value_ids[(PASSWORD, e.password)],
                    None if pair is None else value_ids[(CREDENTIAL, pair)],
                    eventid == LOGIN_SUCCESS,
                )
            )
        elif eventid == COMMAND_INPUT:
            command = e.command or ""
            rows.commands.append(CommandRow(*common, command, value_ids[(INPUT, command)]))
        elif eventid == FILE_DOWNLOAD and e.shasum is not None:
            rows.downloads.append(
                DownloadRow(*common, e.shasum, e.url, e.outfile, value_ids[(SHASUM, e.shasum)])
            )
    return rows


class StoredFirstRow(NamedTuple):
    """A stored row carrying a first-use flag: its key, and per flag pair (value id, flag)."""

    sensor_id: int
    session_id: int
    ts_us: int
    event_hash: bytes
    flags: tuple[tuple[int | None, bool], ...]


@dataclass
class Unflag:
    """A stored row that loses its flag for a value."""

    value_column: str
    flag: str
    sensor_id: int
    value_id: int
    ts_us: int
    event_hash: bytes


def with_first_use_flags(
    table: str, rows: Sequence[Any], stored_first: Sequence[StoredFirstRow]
) -> tuple[list[Any], list[Unflag]]:
    """``rows`` with their flags set, and the stored rows that lose theirs."""
    pairs = FIRST_USE_FLAGS[table]
    id_fields = [f"{value}_id" for value, _ in pairs]
    # The flags are the rows' last fields, in the pairs' order.
    id_at = [rows[0]._fields.index(field) for field in id_fields] if rows else []
    first: dict[tuple[int, int, int], tuple[int, bytes]] = {}
    for row in rows:
        order = (row.ts_us, row.event_hash)
        for pair, at in enumerate(id_at):
            value_id = row[at]
            if value_id is None:
                continue
            key = (pair, row.session_id, value_id)
            known = first.get(key)
            if known is None or order < known:
                first[key] = order
    unflag: list[Unflag] = []
    # Where a stored row comes first, the batch has no first row for that key;
    # where the batch's comes first, the stored row is unflagged.
    for stored in stored_first:
        for pair, (value_id, was_first) in enumerate(stored.flags):
            if value_id is None or not was_first:
                continue
            key = (pair, stored.session_id, value_id)
            if key not in first:
                continue
            if first[key] < (stored.ts_us, stored.event_hash):
                value, flag = pairs[pair]
                unflag.append(
                    Unflag(value, flag, stored.sensor_id, value_id, stored.ts_us, stored.event_hash)
                )
            else:
                del first[key]
    flagged = []
    for row in rows:
        order = (row.ts_us, row.event_hash)
        flags = tuple(
            row[at] is not None and first.get((pair, row.session_id, row[at])) == order
            for pair, at in enumerate(id_at)
        )
        flagged.append(row._make(row[: -len(pairs)] + flags))
    return flagged, unflag
