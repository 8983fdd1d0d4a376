"""First/last event per rollup hour; data version for the result cache.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

HOUR_BOUNDS = """
UPDATE hourly_rollups SET
  first_ts_us = (SELECT min(e.ts_us) FROM events e
                 WHERE e.sensor_id = hourly_rollups.sensor_id
                   AND e.ts_us >= hourly_rollups.hour * 3600000000
                   AND e.ts_us < (hourly_rollups.hour + 1) * 3600000000),
  last_ts_us = (SELECT max(e.ts_us) FROM events e
                WHERE e.sensor_id = hourly_rollups.sensor_id
                  AND e.ts_us >= hourly_rollups.hour * 3600000000
                  AND e.ts_us < (hourly_rollups.hour + 1) * 3600000000)
"""


def upgrade() -> None:
    op.add_column("hourly_rollups", sa.Column("first_ts_us", sa.BigInteger(), nullable=True))
    op.add_column("hourly_rollups", sa.Column("last_ts_us", sa.BigInteger(), nullable=True))
    op.execute(HOUR_BOUNDS)  # existing data: bounds from the stored events
    data_version = op.create_table(
        "data_version",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_data_version")),
    )
    op.bulk_insert(data_version, [{"id": 1, "version": 0}])


def downgrade() -> None:
    op.drop_table("data_version")
    with op.batch_alter_table("hourly_rollups") as batch:
        batch.drop_column("last_ts_us")
        batch.drop_column("first_ts_us")
