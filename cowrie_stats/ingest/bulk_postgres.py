"""The ingest's bulk operations on PostgreSQL: COPY and binary array parameters.

Chosen by :func:`cowrie_stats.ingest.operations.bulk_operations`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Table, func, select, sql, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql.dml import Insert

from cowrie_stats.ingest.bulk import INGEST_LOCK_KEY, STAGE_ABOVE_ROWS, BulkOps, quoted_names


class PostgresBulkOps(BulkOps):
    def _insert(self, table: Table) -> Insert:
        return postgresql.insert(table)

    def _cursor(self) -> Any:
        """The psycopg cursor under the connection, for COPY and binary array parameters."""
        return self._idle().connection.dbapi_connection.cursor()  # type: ignore[union-attr]

    def lock(self) -> None:
        self._idle().execute(select(func.pg_advisory_xact_lock(INGEST_LOCK_KEY)))

    def _copy_rows(
        self, cursor: Any, target: str, columns: Sequence[str], rows: Iterable[Any]
    ) -> None:
        with cursor.copy(f"COPY {target} ({quoted_names(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    def insert_rows(
        self, table: Table, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        # COPY: several times faster than executemany, and tuples rather than dicts.
        if rows:
            self._copy_rows(self._cursor(), table.name, columns, rows)

    @contextmanager
    def insert_in_background(
        self, table: Table, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> Iterator[None]:
        """COPY in a thread: the server stores the rows while this thread runs Python.

        The client waits on the server for most of a COPY, with the GIL free.
        """
        cursor = self._cursor()
        self._thread = ThreadPoolExecutor(1)
        self._copy = self._thread.submit(self._copy_rows, cursor, table.name, columns, rows)
        try:
            yield
        finally:
            self._join_copy()

    def _staged(
        self, name: str, source: Table, columns: Sequence[str], rows: Iterable[Any]
    ) -> sql.TableClause:
        """A temporary table (dropped at commit) of ``source``'s ``columns``, COPYed in."""
        self._idle().execute(
            text(
                f"CREATE TEMP TABLE {name} ON COMMIT DROP AS"
                f" SELECT {quoted_names(columns)} FROM {source.name} WITH NO DATA"
            )
        )
        self._copy_rows(self._cursor(), name, columns, rows)
        return sql.table(name, *(sql.column(c) for c in columns))

    def _execute_upsert(
        self, stmt: Any, table: Table, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        if len(rows) <= STAGE_ABOVE_ROWS:
            super()._execute_upsert(stmt, table, columns, rows)
            return
        staged = self._staged(f"staged_{table.name}", table, columns, rows)
        self._idle().execute(stmt.from_select(columns, select(*staged.c)))
        self._idle().execute(text(f"DROP TABLE staged_{table.name}"))

    def update_rows(
        self, table: Table, key: str, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]
    ) -> None:
        if not rows:
            return
        name = f"updates_{table.name}"
        staged = [key, *columns]
        self._staged(name, table, staged, (tuple(row[c] for c in staged) for row in rows))
        assignments = ", ".join(f'"{c}" = u."{c}"' for c in columns)
        self._idle().execute(
            text(f"UPDATE {table.name} t SET {assignments} FROM {name} u WHERE t.{key} = u.{key}")
        )
        self._idle().execute(text(f"DROP TABLE {name}"))

    def existing_event_hashes(self, keys: Sequence[tuple[int, bytes]]) -> set[bytes]:
        # Array parameters: a short statement psycopg prepares once, where IN lists
        # of hundreds of placeholders are parsed again every batch. Sent in binary
        # (%b): the text form escapes each bytea element in Python, about 100 times
        # slower for a batch of 5,000 hashes.
        cursor = self._cursor()
        cursor.execute(
            "SELECT e.hash FROM events e"
            " JOIN unnest(%b::bigint[], %b::bytea[]) AS k(ts_us, hash)"
            " ON e.ts_us = k.ts_us AND e.hash = k.hash",
            [[ts_us for ts_us, _ in keys], [digest for _, digest in keys]],
        )
        return {row[0] for row in cursor}

    def sessions_of(self, keys: Iterable[tuple[int, str]]) -> Iterator[dict[str, Any]]:
        """Whole sessions rows for these keys: one query joining two binary arrays."""
        pairs = list(keys)
        cursor = self._cursor()
        cursor.execute(
            "SELECT s.* FROM sessions s"
            " JOIN unnest(%b::integer[], %b::text[]) AS k(sensor_id, session)"
            " ON s.sensor_id = k.sensor_id AND s.session = k.session",
            [[sensor_id for sensor_id, _ in pairs], [session for _, session in pairs]],
        )
        names = [column.name for column in cursor.description]
        for values in cursor:
            yield dict(zip(names, values, strict=True))

    def dictionary_ids(self, digests: Sequence[bytes]) -> Iterator[tuple[bytes, int]]:
        cursor = self._cursor()
        cursor.execute(
            "SELECT d.digest, d.id FROM value_dictionary d JOIN unnest(%b::bytea[]) AS k(digest)"
            " ON d.digest = k.digest",
            [list(digests)],
        )
        yield from cursor

    def new_ids(self, table: str, count: int) -> list[int]:
        if not count:
            return []
        cursor = self._cursor()
        cursor.execute(
            "SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)",
            [table, count],
        )
        return [new_id for (new_id,) in cursor]

    def stored_sets(
        self, keys: Sequence[tuple[int, int, int, int]]
    ) -> dict[tuple[int, int, int, int], bytes]:
        # Four arrays joined on the primary key: a row-value IN list of hundreds of
        # keys is planned as a scan of the whole table.
        if not keys:
            return {}
        cursor = self._cursor()
        cursor.execute(
            "SELECT t.kind, t.level, t.piece, t.sensor_id, t.members FROM rollup_sets t"
            " JOIN unnest(%b::smallint[], %b::smallint[], %b::bigint[], %b::integer[])"
            " AS k(kind, level, piece, sensor_id) ON t.kind = k.kind AND t.level = k.level"
            " AND t.piece = k.piece AND t.sensor_id = k.sensor_id",
            [list(column) for column in zip(*keys, strict=True)],
        )
        return {
            (kind, level, piece, sensor): members for kind, level, piece, sensor, members in cursor
        }

    def clear_flags(self, table: Table, flag: str, keys: Sequence[tuple[int, bytes]]) -> None:
        if not keys:
            return
        self._cursor().execute(
            f"UPDATE {table.name} t SET {flag} = false"
            " FROM unnest(%b::bigint[], %b::bytea[]) AS k(ts_us, event_hash)"
            " WHERE t.ts_us = k.ts_us AND t.event_hash = k.event_hash",
            [[ts_us for ts_us, _ in keys], [digest for _, digest in keys]],
        )

    def rows_in_ranges(
        self, table: str, columns: str, ranges: Sequence[tuple[int, int, int, int]], where: str
    ) -> list[dict[str, Any]]:
        if not ranges:
            return []
        cursor = self._cursor()
        cursor.execute(
            f"SELECT {columns}"
            " FROM unnest(%b::integer[], %b::bigint[], %b::bigint[], %b::bigint[])"
            " AS k(sensor_id, session_id, low, high)"
            f" CROSS JOIN LATERAL (SELECT * FROM {table} t"
            "  WHERE t.sensor_id = k.sensor_id AND t.ts_us BETWEEN k.low AND k.high"
            f"  AND t.session_id = k.session_id AND ({where})) t",
            [list(column) for column in zip(*ranges, strict=True)],
        )
        names = [column.name for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
