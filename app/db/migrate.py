"""Database migrations with Alembic, configured in code (no alembic.ini): ``migrate(url)`` brings a database
to the newest schema and is a no-op on one already there, so the service calls it on every start.

The scripts live in the repository's ``alembic/`` folder, linked as ``app/db/migrations/`` so that a wheel
carries them as package data. Other Alembic commands
run against the configured database (``METASERVE_DATABASE_URL``, or the SQLite file in
``METASERVE_DATA_DIR``) with ``python -m app.db.migrate <command>``, e.g. ``current``, ``history``,
``check``, ``upgrade head --sql``, or ``revision --autogenerate -m "add jobs.priority"`` after changing
``app/db/tables.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from alembic import command
from alembic.config import CommandLine, Config

from app.config import get_settings

__all__ = ["MIGRATIONS", "alembic_config", "migrate"]

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
"""The Alembic folder (env.py, script.py.mako, versions/): ``alembic/`` through the package's link to it, or
the wheel's copy."""


def alembic_config(url: str) -> Config:
    """Alembic's configuration for the database at ``url``, with the scripts in ``MIGRATIONS``."""
    if not (MIGRATIONS / "env.py").is_file():
        raise FileNotFoundError(
            f"no Alembic scripts at {MIGRATIONS}: the metaserve installation is incomplete, reinstall it"
        )
    config = Config()
    # Config values pass through ConfigParser interpolation, where '%' (as in an escaped password) is special.
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def migrate(url: str) -> None:
    """Upgrade the database at ``url`` to the newest revision, creating it if needed. Processes that migrate
    one database at once take turns on a lock of the database's own (``migrations/env.py``), so the first
    migrates and the others find nothing to do."""
    command.upgrade(alembic_config(url), "head")


def main(argv: list[str] | None = None) -> None:
    """The Alembic command line, on the configured database and these scripts."""
    cli = CommandLine(prog="python -m app.db.migrate")
    options = cli.parser.parse_args(argv)
    if not hasattr(options, "cmd"):
        cli.parser.error("an Alembic command is required, e.g. current, upgrade head or history")
    config = alembic_config(get_settings().database_url_resolved)
    config.cmd_opts = options
    cli.run_cmd(config, options)


if __name__ == "__main__":
    main(sys.argv[1:])
