"""A throwaway PostgreSQL server for the tests: a cluster made by ``initdb`` in a temporary folder, started
by ``pg_ctl`` on a free port of 127.0.0.1 with its socket in that folder, stopped and deleted at the end.
PostgreSQL refuses to run as root, so root runs it as the ``postgres`` user."""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine

USER = "metaserve"
"""The cluster's superuser, trusted on its local connections."""
MISSING = (
    "PostgreSQL is NOT installed, so the PostgreSQL tests did NOT run: run `make postgres` "
    "(apt-get install postgresql), or put PostgreSQL's initdb and pg_ctl on PATH"
)
NO_DRIVER = "psycopg is NOT installed, so the PostgreSQL tests did NOT run: pip install -e '.[postgres]'"
START_SECONDS = 60


def binaries() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``: PATH's, else the newest ``/usr/lib/postgresql/*/bin``
    (where Debian's package puts them, off PATH)."""
    found = shutil.which("initdb")
    folders = [Path(found).resolve().parent] if found else []
    by_version = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: _version(Path(p).parent.name))
    folders += [Path(p) for p in reversed(by_version)]
    return next((f for f in folders if (f / "initdb").is_file() and (f / "pg_ctl").is_file()), None)


def unavailable() -> str | None:
    """Why no throwaway server can start here, or None when one can."""
    if binaries() is None:
        return MISSING
    if os.getuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root, with no `postgres` user to run PostgreSQL as (it refuses root)"
    return None


class PostgresServer:
    """A running server; ``new_database()`` gives the URL of an empty database of its own to each test."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._names = itertools.count(1)

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        name = f"test_{next(self._names)}"
        engine = create_engine(self.url("postgres"), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                connection.exec_driver_sql(f"CREATE DATABASE {name}")
        finally:
            engine.dispose()
        return self.url(name)


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway server, as described at the top; check ``unavailable()`` first."""
    # Imported here: the test modules import conftest, which imports this module.
    from tests.test_serve_e2e import free_port

    folder = binaries()
    assert folder is not None, MISSING
    # Under /tmp, not pytest's temporary folders, which only root may enter.
    root = Path(tempfile.mkdtemp(prefix="metaserve-postgres-"))
    data, log, port = root / "data", root / "server.log", free_port()
    run_as: list[str] = []
    if os.getuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]

    def pg(*command: str) -> None:
        done = subprocess.run([*run_as, *command], capture_output=True, text=True, timeout=START_SECONDS)
        log_text = log.read_text() if log.is_file() else ""
        assert done.returncode == 0, f"{command[0]} failed:\n{done.stdout}{done.stderr}\n{log_text}"

    try:
        pg(str(folder / "initdb"), "-D", str(data), "-U", USER, "-A", "trust", "-E", "UTF8", "--no-sync")
        # -F: no fsync, the data is thrown away anyway.
        options = f"-F -h 127.0.0.1 -p {port} -k {root}"
        pg(str(folder / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "start")
        try:
            yield PostgresServer(port)
        finally:
            pg(str(folder / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())
