"""Database layer: schema, migrations and engine routing."""
