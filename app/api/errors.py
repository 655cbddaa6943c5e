"""How the serving layer's errors reach a client: a ``ValueError`` becomes a 422 shaped like FastAPI's own
validation errors, with the field it names in ``loc``; ``NotFound`` becomes a 404 and ``Conflict`` a 409.
``problems`` documents those statuses in the OpenAPI schema, and a 405 lists every method of its path. An
unhandled error is a 500 that names the request's id, as its log lines do."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.routing import Match, Route

from app.api.middleware import REQUEST_ID
from app.api.schemas import Problem
from app.serving.errors import CallerGone, Conflict, NotFound, Overloaded

__all__ = ["install_error_handlers", "invalid_fields", "problems"]

CLIENT_CLOSED_REQUEST = 499
"""nginx's status for a request whose client left before the answer; logged, never read."""

PROBLEMS = {
    status.HTTP_400_BAD_REQUEST: "The body cannot be parsed (not UTF-8 JSON, or a broken form).",
    status.HTTP_401_UNAUTHORIZED: "No API key in `X-API-Key`, or an unknown or revoked one.",
    status.HTTP_403_FORBIDDEN: "The API key may not do this: only an admin key may.",
    status.HTTP_404_NOT_FOUND: "No such model, session, dataset or job.",
    status.HTTP_409_CONFLICT: "The target's state refuses the request.",
    status.HTTP_413_CONTENT_TOO_LARGE: "The body is over its limit.",
    status.HTTP_429_TOO_MANY_REQUESTS: "Over the API key's rate limit: retry after `Retry-After` seconds.",
    status.HTTP_503_SERVICE_UNAVAILABLE: "Starting, stopping or too busy: retry after `Retry-After` seconds.",
}
"""The error statuses a route may answer beside 422, each with a `Problem` body."""

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


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of a route that may answer the error statuses ``codes``."""
    return {code: {"model": Problem, "description": PROBLEMS[code]} for code in codes}


async def _http_error(request: Request, error: Exception) -> Response:
    """FastAPI's own answer, but a 405 names in ``Allow`` the methods of every route on the path: Starlette
    names those of the first route that matched it alone (only POST on /datasets, which has GET too)."""
    assert isinstance(error, HTTPException)
    if error.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
        methods = {
            method
            for route in request.app.routes
            if isinstance(route, Route) and route.matches(request.scope)[0] is not Match.NONE
            for method in route.methods or ()
        }
        error.headers = {**(error.headers or {}), "Allow": ", ".join(sorted(methods))}
    return await http_exception_handler(request, error)


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


def _internal_error(request: Request, error: Exception) -> JSONResponse:
    """Starlette's outermost middleware sends this answer, past ``Observe``'s headers, then re-raises the
    error for the log: the request's id goes in the header and the detail here, to quote in a report."""
    rid = getattr(request.state, "request_id", "unknown")
    return JSONResponse(
        {"detail": f"internal error; quote request id {rid} when you report it"},
        status_code=status.HTTP_500_INTERNAL_SERVER_ERROR,
        headers={REQUEST_ID: rid},
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(NotFound, _not_found)
    app.add_exception_handler(Conflict, _conflict)
    app.add_exception_handler(Overloaded, _overloaded)
    app.add_exception_handler(CallerGone, _caller_gone)
    app.add_exception_handler(Exception, _internal_error)
