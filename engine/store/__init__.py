"""Storage adapters of `engine.application.ports`.

- `engine.store.sql`: SQLAlchemy Core over SQLite (embedded default) or PostgreSQL (psycopg 3):
  the engine, units of work, and the repository a batch reads and writes through.
- `engine.store.tables`: the SQL schema and how the port's records map to rows and back.
- `engine.store.queries`: the read models, every read that is not a batch's (monitoring, the
  indicators, the report, the audit trail, replays and their verification); nothing outside
  `engine.store` touches a table.
- `engine.store.bulk`: bulk copies outside the batch path (a parallel replay's scratch files
  and their merge).
- `engine.store.audit`: audit checkpoints and verification of the hash-chained history.
- `engine.store.memory`: plain Python objects, for unit tests and benchmarks of the pure path.
- `engine.store.writer`: the order in which a store writes a batch's `ChangeSet`.
- `engine.store.failures`: which database failures are the infrastructure's (retried).
- `engine.store.migrate`: the Alembic migrations that create the SQL schema.

Nothing is imported here, so that using the in-memory adapter never loads SQLAlchemy.
"""
