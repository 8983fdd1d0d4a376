"""Time-ordered primary keys on the per-event tables: (ts_us, hash) instead of (hash).

The hash identifies an event and covers its timestamp, so (ts_us, hash) is
unique exactly when the hash is, and every lookup by hash knows the event's
time. Logs arrive roughly in time order: new keys now land at the right edge of
the index instead of on random pages. Once the index outgrows shared buffers,
random 16-byte keys cost PostgreSQL about twice the time per inserted row
(docs/performance.md, "Time-ordered keys").

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# table -> its event hash column
KEYED = {
    "events": "hash",
    "login_attempts": "event_hash",
    "commands": "event_hash",
    "downloads": "event_hash",
}


def _rekey(columns: dict[str, list[str]]) -> None:
    for table, key in columns.items():
        # Batch mode: SQLite can only change a primary key by rebuilding the table.
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(f"pk_{table}", type_="primary")
            batch.create_primary_key(f"pk_{table}", key)


def upgrade() -> None:
    _rekey({table: ["ts_us", digest] for table, digest in KEYED.items()})


def downgrade() -> None:
    _rekey({table: [digest] for table, digest in KEYED.items()})
