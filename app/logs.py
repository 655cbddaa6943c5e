"""How every metaserve process logs: one line per message on stderr, JSON for a log collector or text for
a person at a terminal (``log_format``), the same in the service, uvicorn and the job workers.

A JSON line carries ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``pid`` and ``message``, plus whatever
fields its call passed in ``extra`` (a request's ``request_id``, ``status``, ``duration_ms``…; a job's
``job_id`` and ``state``)."""

from __future__ import annotations

import logging.config
import sys
from typing import Any, Literal

from pythonjsonlogger.core import RESERVED_ATTRS

__all__ = ["REQUESTS", "LogFormat", "configure", "logging_config", "resolved"]

LogFormat = Literal["auto", "json", "text"]
REQUESTS = "app.requests"
"""The logger of the one line per HTTP request, which replaces uvicorn's access log."""


def resolved(log_format: LogFormat) -> Literal["json", "text"]:
    """``log_format`` with ``auto`` decided: text when stderr is a terminal, JSON otherwise."""
    if log_format == "auto":
        return "text" if sys.stderr.isatty() else "json"
    return log_format


def logging_config(log_format: LogFormat, process_ids: bool = False) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` that sends every logger (the service's, uvicorn's) to stderr in
    ``log_format``; ``process_ids`` names the process in text lines too (JSON lines always do). uvicorn's
    access log is silenced: the service logs each request itself, with its id."""
    if resolved(log_format) == "json":
        formatter: dict[str, Any] = {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(levelname)s %(name)s %(process)d %(message)s",
            "rename_fields": {"levelname": "level", "name": "logger", "process": "pid"},
            "timestamp": "time",
            # uvicorn adds a copy of some messages with terminal colour codes, noise in a JSON line.
            "reserved_attrs": [*RESERVED_ATTRS, "color_message"],
        }
    else:
        pid = " [%(process)d]" if process_ids else ""
        formatter = {
            "()": "uvicorn.logging.DefaultFormatter",
            "fmt": f"%(asctime)s %(levelprefix)s{pid} %(name)s: %(message)s",
        }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"service": formatter},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "service", "stream": "ext://sys.stderr"}
        },
        "root": {"handlers": ["stderr"], "level": "INFO"},
        "loggers": {
            "uvicorn": {"level": "INFO"},
            "uvicorn.access": {"level": "WARNING"},
        },
    }


def configure(log_format: LogFormat) -> None:
    """Log this process (a job worker, a script) as the service does."""
    logging.config.dictConfig(logging_config(log_format))
