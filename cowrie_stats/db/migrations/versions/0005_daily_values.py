"""Per-day value rollups for the rankings (daily_values).

A ranking over 30 days or all time grouped every login attempt, command or
download of the window. ``daily_values`` keeps, per (kind, UTC day, sensor,
value), the uses, first uses (rows with a first-use flag) and the first and
last use, maintained by the ingest. The window's whole days are read
from it, one row per value-day; only its two partial days come from the raw rows.
Existing data is rolled up here with the rules the ingest applies.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Floor division on both backends (their integer division truncates toward zero).
DAY = "(CASE WHEN ts_us >= 0 THEN ts_us / 86400000000 ELSE (ts_us + 1) / 86400000000 - 1 END)"

# kind, table, value column (its first-use flag is <value>_first)
ROLLED_UP = [
    (1, "login_attempts", "username"),
    (2, "login_attempts", "password"),
    (3, "commands", "input"),
    (4, "downloads", "shasum"),
]

ROLL_UP = """
INSERT INTO daily_values (kind, day, sensor_id, value, uses, first_uses, first_ts_us, last_ts_us)
SELECT {kind}, {day}, sensor_id, {value}, count(*),
       sum(CASE WHEN {value}_first THEN 1 ELSE 0 END), min(ts_us), max(ts_us)
FROM {table}
WHERE {value} IS NOT NULL
GROUP BY 2, 3, 4
"""


def upgrade() -> None:
    op.create_table(
        "daily_values",
        sa.Column("kind", sa.SmallInteger(), nullable=False),
        sa.Column("day", sa.Integer(), nullable=False),
        sa.Column("sensor_id", sa.Integer(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("uses", sa.Integer(), nullable=False),
        sa.Column("first_uses", sa.Integer(), nullable=False),
        sa.Column("first_ts_us", sa.BigInteger(), nullable=False),
        sa.Column("last_ts_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("kind", "day", "sensor_id", "value", name=op.f("pk_daily_values")),
    )
    for kind, table, value in ROLLED_UP:
        op.execute(ROLL_UP.format(kind=kind, day=DAY, table=table, value=value))


def downgrade() -> None:
    op.drop_table("daily_values")
