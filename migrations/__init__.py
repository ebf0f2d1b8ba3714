"""Alembic migrations of the `pgrag` schema, installed as `pgrag.migrations`."""
