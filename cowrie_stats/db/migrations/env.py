"""Alembic environment: runs migrations on the connection cowrie_stats.db.schema hands it.

There is no alembic.ini: ``cowrie-stats migrate`` is the way to migrate, so the
URL, credentials and engine options come from the same settings as everything else.
"""

from __future__ import annotations

from alembic import context

from cowrie_stats.db.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `cowrie-stats migrate`")

context.configure(connection=connection, target_metadata=Base.metadata)
with context.begin_transaction():
    context.run_migrations()
