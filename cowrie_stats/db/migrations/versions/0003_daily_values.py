"""Per-value daily counts for the rankings.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from cowrie_stats.ingest.writer import value_hash

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# kind -> (table, column): the same numbering as cowrie_stats.db.models.VALUE_KINDS.
SOURCES = {
    1: ("login_attempts", "username"),
    2: ("login_attempts", "password"),
    3: ("commands", "input"),
    4: ("downloads", "shasum"),
}
BATCH = 5000


def upgrade() -> None:
    daily_values = op.create_table(
        "daily_values",
        sa.Column("kind", sa.SmallInteger(), nullable=False),
        sa.Column("day", sa.BigInteger(), nullable=False),
        sa.Column("sensor_id", sa.Integer(), nullable=False),
        sa.Column("value_hash", sa.LargeBinary(length=16), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["sensor_id"], ["sensors.id"], name=op.f("fk_daily_values_sensor_id_sensors")
        ),
        sa.PrimaryKeyConstraint(
            "kind", "day", "sensor_id", "value_hash", name=op.f("pk_daily_values")
        ),
    )
    # Existing data: count it once from the per-event tables.
    connection = op.get_bind()
    for kind, (table, column) in SOURCES.items():
        rows = connection.execute(
            sa.text(
                f"SELECT ts_us / 86400000000 AS day, sensor_id, {column}, count(*)"
                f" FROM {table} WHERE {column} IS NOT NULL GROUP BY 1, 2, 3"
            )
        )
        batch = []
        for day, sensor_id, value, events in rows:
            batch.append(
                {
                    "kind": kind,
                    "day": day,
                    "sensor_id": sensor_id,
                    "value_hash": value_hash(value),
                    "value": value,
                    "events": events,
                }
            )
            if len(batch) >= BATCH:
                op.bulk_insert(daily_values, batch)
                batch = []
        if batch:
            op.bulk_insert(daily_values, batch)


def downgrade() -> None:
    op.drop_table("daily_values")
