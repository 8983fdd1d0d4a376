"""First-use flags on the per-event tables; longest session per sensor.

A ranked value's ``sessions`` is the number of distinct sessions that used it in
the window. Counted with ``count(DISTINCT session_id)`` over the winners' rows it
cost about half of an uncached ``GetThreatStats`` (a second scan and a sort of
hundreds of thousands of rows for all time). Each (session, value) now has one
flagged row, its first (by timestamp, then event hash), so the ranking's own scan
counts the sessions; ``sensors.max_session_us`` bounds the search for sessions that
straddle a window's start (queries.py). Existing rows are flagged here with the
same rule the ingest applies.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# table -> (value column, flag column) pairs
FLAGS = {
    "login_attempts": [("username", "username_first"), ("password", "password_first")],
    "commands": [("input", "input_first")],
    "downloads": [("shasum", "shasum_first")],
}

FLAG_FIRST_ROWS = """
UPDATE {table} SET {flag} = TRUE WHERE event_hash IN (
  SELECT event_hash FROM (
    SELECT event_hash, row_number() OVER (
      PARTITION BY session_id, {value} ORDER BY ts_us, event_hash) AS n
    FROM {table} WHERE {value} IS NOT NULL) AS ranked
  WHERE n = 1)
"""

LONGEST_SESSIONS = """
UPDATE sensors SET max_session_us = COALESCE(
  (SELECT max(end_ts_us - start_ts_us) FROM sessions WHERE sessions.sensor_id = sensors.id), 0)
"""


def upgrade() -> None:
    op.add_column(
        "sensors",
        sa.Column("max_session_us", sa.BigInteger(), server_default="0", nullable=False),
    )
    op.execute(LONGEST_SESSIONS)
    for table, pairs in FLAGS.items():
        for value, flag in pairs:
            op.add_column(
                table, sa.Column(flag, sa.Boolean(), server_default=sa.false(), nullable=False)
            )
            op.execute(FLAG_FIRST_ROWS.format(table=table, flag=flag, value=value))


def downgrade() -> None:
    # Plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35): batch mode would rebuild
    # sensors, which the foreign keys of sessions and hourly_rollups forbid.
    for table, pairs in FLAGS.items():
        for _, flag in pairs:
            op.drop_column(table, flag)
    op.drop_column("sensors", "max_session_us")
