"""How much of a text that attackers wrote an answer carries.

Usernames, passwords, commands, source "IPs", URLs and shasums come from honeypot
logs, so any of them can be megabytes long; twenty such passwords once made the
default GetThreatStats too large to send to anyone. An answer therefore carries at
most :data:`MAX_TEXT_CHARS` characters (Unicode code points) of each such value,
with a flag saying it was cut and the whole value's length beside it. The whole
text stays stored, rankings still count and order by it, and the cut is made by
the database (:func:`head`), so a huge value is never loaded whole into the server.
Sensor names need no cap: the ingest refuses those longer than 256 characters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, func

#: Characters (Unicode code points) of one attacker-written value an answer carries.
MAX_TEXT_CHARS = 1024


@dataclass(frozen=True)
class CappedText:
    """The first :data:`MAX_TEXT_CHARS` characters of a value and its whole length."""

    text: str
    length: int

    @property
    def truncated(self) -> bool:
        return len(self.text) < self.length

    def fields(self, name: str) -> dict[str, Any]:
        """The contract's fields for this text: ``name``, ``name_truncated``, ``name_length``."""
        return {name: self.text, f"{name}_truncated": self.truncated, f"{name}_length": self.length}


def head(column: ColumnElement[Any], chars: int = MAX_TEXT_CHARS) -> ColumnElement[str]:
    """SQL for the first ``chars`` characters of ``column`` (SQLite and PostgreSQL count
    code points)."""
    return func.substr(column, 1, chars)


def char_length(column: ColumnElement[Any]) -> ColumnElement[int]:
    """SQL for the length of ``column`` in code points, on both backends."""
    return func.length(column)
