"""The metadata database: ORM tables, engines (SQLite in WAL mode) and Alembic migrations."""
