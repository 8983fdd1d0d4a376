"""No foreign keys on the per-event tables (events, login_attempts, commands, downloads).

Every row of these tables is written by the ingest writer, in the transaction
that also upserts its sensor and inserts or reads its session, under the ingest
advisory lock; nothing ever deletes a sensor or a session. The constraints could
therefore never fail, yet on PostgreSQL each checked row cost a trigger and a
``SELECT ... FOR KEY SHARE`` on sensors or sessions: 1.7 lookups per event, about
an eighth of the database time of an ingest. Sessions and hourly rollups keep
their foreign key to sensors (one check per session or hour, not per event).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# table -> the (column, referred table) of each foreign key dropped
DROPPED = {
    "events": [("sensor_id", "sensors")],
    "login_attempts": [("sensor_id", "sensors"), ("session_id", "sessions")],
    "commands": [("sensor_id", "sensors"), ("session_id", "sessions")],
    "downloads": [("sensor_id", "sensors"), ("session_id", "sessions")],
}


def _name(table: str, column: str, referred: str) -> str:
    return f"fk_{table}_{column}_{referred}"  # the metadata naming convention


def upgrade() -> None:
    for table, keys in DROPPED.items():
        # Batch mode: SQLite can only drop a constraint by rebuilding the table.
        with op.batch_alter_table(table) as batch:
            for column, referred in keys:
                batch.drop_constraint(_name(table, column, referred), type_="foreignkey")


def downgrade() -> None:
    for table, keys in DROPPED.items():
        with op.batch_alter_table(table) as batch:
            for column, referred in keys:
                batch.create_foreign_key(_name(table, column, referred), referred, [column], ["id"])
