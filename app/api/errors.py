"""How the serving layer's errors reach a client: a ``ValueError`` becomes a 422 shaped like FastAPI's own
validation errors, with the field it names in ``loc``; ``NotFound`` becomes a 404 and ``Conflict`` a 409."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from app.serving.errors import CallerGone, Conflict, NotFound, Overloaded

__all__ = ["install_error_handlers", "invalid_fields"]

CLIENT_CLOSED_REQUEST = 499
"""nginx's status for a request whose client left before the answer; logged, never read."""

# The serving layer's messages start with the field: "x[3]: expected shape ...", "steps: must be ...".
_FIELD = re.compile(r"(?P<name>[a-z_]+)(?P<indices>(?:\[\d+\])*): (?P<message>.+)", re.DOTALL)


@contextmanager
def invalid_fields(*location: str, parents: Mapping[str, tuple[str, ...]] | None = None) -> Iterator[None]:
    """Turn a ``ValueError`` raised inside into a ``RequestValidationError`` at ``location`` (e.g. "body"),
    then under ``parents[field]`` (e.g. ``{"x": ("support",)}``), the field and its indices."""
    try:
        yield
    except ValueError as error:
        text = str(error)
        found = _FIELD.fullmatch(text)
        if found is None:
            loc: tuple[str | int, ...] = location
        else:
            name, text = found["name"], found["message"]
            indices = [int(i) for i in re.findall(r"\d+", found["indices"])]
            loc = (*location, *(parents or {}).get(name, ()), name, *indices)
        raise RequestValidationError([{"type": "value_error", "loc": loc, "msg": text}]) from error


def _not_found(request: Request, error: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(error)}, status_code=status.HTTP_404_NOT_FOUND)


def _conflict(request: Request, error: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(error)}, status_code=status.HTTP_409_CONFLICT)


def _overloaded(request: Request, error: Exception) -> JSONResponse:
    retry_after = error.retry_after if isinstance(error, Overloaded) else 1
    return JSONResponse(
        {"detail": str(error)},
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": str(retry_after)},
    )


def _caller_gone(request: Request, error: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(error)}, status_code=CLIENT_CLOSED_REQUEST)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(NotFound, _not_found)
    app.add_exception_handler(Conflict, _conflict)
    app.add_exception_handler(Overloaded, _overloaded)
    app.add_exception_handler(CallerGone, _caller_gone)
