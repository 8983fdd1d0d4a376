"""Plain-text tables for a terminal, safe for values an attacker wrote.

Usernames, passwords, commands, URLs and even sensor names come from honeypot logs,
so every text cell is treated as hostile: characters a terminal could act on
(control characters, escape sequences, bidi overrides, zero-width and other
invisible format characters, line separators) are shown as Python-style escapes
(``\\x1b``, ``\\u202e``), and a value wider than the column limit is cut with ``…``.
Exact values are what ``--json`` is for. Widths count East Asian wide characters as
two columns and combining marks as none, so columns stay aligned.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC

from google.protobuf import timestamp_pb2

ELLIPSIS = "…"
EMPTY = '""'
UNSET = "-"
DEFAULT_MAX_WIDTH = 64
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(char: str) -> str:
    if char in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[char]
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def escape(text: str) -> str:
    """``text`` with every character that is not printable (as str.isprintable) escaped."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _escape_char(char) for char in text)


def char_width(char: str) -> int:
    if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me"):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def width(text: str) -> int:
    """Columns ``text`` takes on a terminal (after :func:`escape`)."""
    if text.isascii():
        return len(text)
    return sum(char_width(char) for char in text)


def clip(text: str, max_width: int) -> str:
    """``text`` cut to ``max_width`` columns, ending in ``…`` when cut; 0 = no limit.

    Combining marks take no column, so the number of characters is bounded too: a
    value made of thousands of them would otherwise pass whole.
    """
    if max_width <= 0 or (width(text) <= max_width and len(text) <= 4 * max_width):
        return text
    kept: list[str] = []
    used = 0
    for char in text[: 4 * max_width]:
        used += char_width(char)
        if used > max_width - 1:
            break
        kept.append(char)
    return "".join(kept) + ELLIPSIS


def text(value: str, max_width: int = DEFAULT_MAX_WIDTH) -> str:
    """A text cell: escaped, clipped, and ``""`` when empty (so it is not mistaken for none)."""
    return clip(escape(value), max_width) if value else EMPTY


def integer(value: int) -> str:
    return f"{value:,}"


def decimal(value: float) -> str:
    return f"{value:,.2f}"


def timestamp(value: timestamp_pb2.Timestamp, present: bool = True) -> str:
    """UTC time to the second, or ``-`` when the field is unset."""
    if not present:
        return UNSET
    return value.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Table:
    """Rows of cells under a title; numeric columns (``right``) are right-aligned."""

    title: str
    columns: Sequence[str]
    right: frozenset[str] = frozenset()
    rows: list[Sequence[str]] = field(default_factory=list)
    header: bool = True

    def add(self, *cells: str) -> None:
        self.rows.append(cells)

    def render(self) -> str:
        """The table as lines of text (no trailing newline); cells must be escaped."""
        shown = ([list(self.columns)] if self.header else []) + [list(r) for r in self.rows]
        widths = [max(width(row[i]) for row in shown) for i in range(len(self.columns))]
        lines = [self.title] if self.title else []
        for row in shown:
            cells = []
            for name, cell, size in zip(self.columns, row, widths, strict=True):
                pad = " " * (size - width(cell))
                cells.append(pad + cell if name in self.right else cell + pad)
            lines.append("  ".join(cells).rstrip())
        if not self.rows:
            lines.append("(none)")
        return "\n".join(lines)
