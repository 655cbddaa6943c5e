"""Alembic's environment: runs the migrations on the URL that app.db.migrate puts in the config."""

from __future__ import annotations

from typing import Any, Literal

from alembic import context
from sqlalchemy import Connection, Engine, event

from app.db.engine import make_engine
from app.db.tables import Base, UTCDateTime

MIGRATION_WAIT_MS = 10 * 60 * 1000
"""How long a process waits on SQLite while another one migrates the database."""
MIGRATION_LOCK = 0x6D657461  # "meta" in ASCII
"""The PostgreSQL advisory lock that a migration holds until it commits."""


def migration_engine(url: str) -> Engine:
    """``make_engine(url)``, with three changes to SQLite for the length of a migration. Foreign keys are
    off: a batch migration rebuilds a table by copying it and dropping the old one, and that drop would
    cascade or fail. Transactions are SQLAlchemy's, begun IMMEDIATE: the sqlite3 module would otherwise
    commit each DDL statement on its own, so a failed upgrade would leave half a schema. And that write lock
    is waited for as long as a migration may take, so that processes starting at once take turns (see
    ``take_turns``)."""
    engine = make_engine(url)
    if engine.dialect.name != "sqlite":
        return engine

    @event.listens_for(engine, "connect")
    def _own_transactions(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA foreign_keys=OFF")
        dbapi_connection.execute(f"PRAGMA busy_timeout={MIGRATION_WAIT_MS}")
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def take_turns(connection: Connection) -> None:
    """Make the processes that migrate one database at once (the workers of ``metaserve serve --workers N``,
    replicas on other machines) take turns, in the transaction that migrates: the first migrates, the others
    wait for it to commit, then find the schema at head. On SQLite the write lock that BEGIN IMMEDIATE takes
    does it; on PostgreSQL, where two processes would otherwise both create the tables, an advisory lock held
    until the migration commits."""
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")


def check_foreign_keys(connection: Connection) -> None:
    """Refuse to commit a migration that left a row pointing at nothing (checked only while keys were off)."""
    if connection.dialect.name != "sqlite":
        return
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
    if broken:
        raise RuntimeError(f"the migration broke foreign keys (table, rowid, parent, key): {broken[:10]}")


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | Literal[False]:
    """Autogenerate writes UTCDateTime as the type it stores, so revisions never import app code."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def run_migrations(url: str) -> None:
    options: dict[str, Any] = {
        "target_metadata": Base.metadata,
        "render_as_batch": True,
        "compare_type": True,
        "render_item": render_item,
    }
    if context.is_offline_mode():
        context.configure(url=url, literal_binds=True, **options)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = migration_engine(url)
    try:
        with engine.connect() as connection:
            context.configure(connection=connection, transactional_ddl=True, **options)
            with context.begin_transaction():
                take_turns(connection)
                context.run_migrations()
                check_foreign_keys(connection)
    finally:
        engine.dispose()


_url = context.config.get_main_option("sqlalchemy.url")
if not _url:
    raise RuntimeError("no sqlalchemy.url in the Alembic config: run migrations through app.db.migrate")
run_migrations(_url)
