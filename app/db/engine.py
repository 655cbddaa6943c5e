"""Engines and ORM session factories; SQLite is set up for a service that many processes share."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

__all__ = ["BUSY_TIMEOUT_MS", "make_engine", "make_session_factory"]

BUSY_TIMEOUT_MS = 5000
"""How long a connection waits for another process's write lock before it fails with 'database is locked'."""

# The busy timeout comes first so that switching to WAL waits for a lock too. WAL lets readers run beside
# the one writer; SQLite leaves foreign keys off unless each connection turns them on.
_SQLITE_PRAGMAS = (
    f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}",
    "PRAGMA journal_mode=WAL",
    "PRAGMA foreign_keys=ON",
)
_RETRY_SECONDS = 0.01


def make_engine(url: str, durable: bool = False) -> Engine:
    """An engine for ``url``. For a SQLite file, its directory is created and every connection gets WAL,
    a busy timeout and foreign keys. In WAL mode a commit survives any crash of the process; ``durable``
    (synchronous FULL) also fsyncs every commit so that it survives a power loss, where NORMAL may lose the
    last ones, though never consistency. Other databases are used as the URL says."""
    parsed = make_url(url)
    engine = create_engine(parsed)
    if parsed.get_backend_name() != "sqlite":
        return engine
    if parsed.database and parsed.database != ":memory:" and not parsed.query.get("uri"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)

    @event.listens_for(engine, "connect")
    def _set_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            for pragma in (*_SQLITE_PRAGMAS, f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}"):
                _execute_when_unlocked(cursor, pragma)
        finally:
            cursor.close()

    return engine


def _execute_when_unlocked(cursor: sqlite3.Cursor, statement: str) -> None:
    """Execute ``statement``, trying again for up to the busy timeout while the database is locked. SQLite
    waits out its busy timeout for most locks, but answers 'database is locked' at once to one of two
    processes switching a new file to WAL together, which stopped a worker of ``serve --workers 2``."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute(statement)
            return
        except sqlite3.OperationalError as error:
            busy = (error.sqlite_errorcode & 0xFF) == sqlite3.SQLITE_BUSY  # SQLITE_BUSY_RECOVERY too
            if not busy or time.monotonic() >= deadline:
                raise
        time.sleep(_RETRY_SECONDS)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """ORM sessions on ``engine``; objects stay readable after commit, so a handler can return them."""
    return sessionmaker(engine, expire_on_commit=False)
