"""How the serving layer's errors reach a client: a ``ValueError`` becomes a 422 shaped like FastAPI's own
validation errors, with the field it names in ``loc``; ``NotFound`` becomes a 404 and ``Conflict`` a 409."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from app.serving import Conflict, NotFound

__all__ = ["install_error_handlers", "invalid_fields"]

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


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(NotFound, _not_found)
    app.add_exception_handler(Conflict, _conflict)
