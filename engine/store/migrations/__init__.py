"""Alembic migrations of the SQL store; run them through `engine.store.migrate`."""
