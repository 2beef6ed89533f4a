"""Storage adapters of `engine.application.ports`.

- `engine.store.sql`: SQLAlchemy Core over SQLite (embedded default) or PostgreSQL (psycopg 3).
- `engine.store.memory`: plain Python objects, for unit tests and benchmarks of the pure path.
- `engine.store.migrate`: the Alembic migrations that create the SQL schema.

Nothing is imported here, so that using the in-memory adapter never loads SQLAlchemy.
"""
