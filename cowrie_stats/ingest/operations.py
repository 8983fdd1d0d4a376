"""The bulk operations of a connection's database, chosen once per connection.

Like alembic's per-dialect ``Impl``: the writer, prune and rebuild ask for them
here and never branch on the database themselves.
"""

from __future__ import annotations

from sqlalchemy import Connection

from cowrie_stats.ingest.bulk import BulkOps, SqliteBulkOps
from cowrie_stats.ingest.bulk_postgres import PostgresBulkOps


def bulk_operations(conn: Connection) -> BulkOps:
    """PostgreSQL's bulk operations (COPY, staging tables) or SQLite's, for ``conn``."""
    if conn.dialect.name == "postgresql":
        return PostgresBulkOps(conn)
    return SqliteBulkOps(conn)
