"""Alembic migrations of the cowrie-stats schema."""
