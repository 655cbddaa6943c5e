"""``Observe``, a pure ASGI middleware around every HTTP request: it gives the request an id (the client's
``X-Request-ID`` when sane) returned in the ``X-Request-ID`` header, observes its latency in the metrics
and logs its one line. Pure ASGI, not ``BaseHTTPMiddleware``: on the hot path it costs a header scan, a
``perf_counter`` pair, one observe and one log record."""

from __future__ import annotations

import logging
import re
import secrets
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.metrics import UNMATCHED, Metrics
from app.logs import REQUESTS

__all__ = ["REQUEST_ID", "Observe", "request_id"]

REQUEST_ID = "X-Request-ID"
_HEADER = REQUEST_ID.lower().encode()
_SANE = re.compile(rb"[A-Za-z0-9._:+/=-]{1,128}")
"""An incoming id kept as it is: bounded, and nothing that could forge a log line or a header."""

logger = logging.getLogger(REQUESTS)


def request_id(scope: Scope) -> str:
    """The request's ``X-Request-ID`` if it is sane (at most 128 letters, digits and ``._:+/=-``), else a
    new random one."""
    for name, value in scope["headers"]:
        if name == _HEADER and _SANE.fullmatch(value):
            return value.decode()
    return secrets.token_hex(16)


class Observe:
    """Wraps ``app``: every HTTP response carries ``X-Request-ID``, errors included (an unhandled error's
    500 gets it from ``request.state.request_id``), and when it is sent the request is observed in
    ``metrics`` and logged: method, path, route template, status, duration, client, and the API key's id
    (``request.state.key_id``, set by the auth dependency) when known, never the key."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id(scope)
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        header = (_HEADER, rid.encode())
        status = 500  # what the client gets if the app raises before it answers

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = getattr(scope.get("route"), "path_format", UNMATCHED)
            self.metrics.observe_request(scope["method"], route, status, seconds)
            if logger.isEnabledFor(logging.INFO):
                _log(scope, rid, route, status, seconds, state.get("key_id"))


def _log(scope: Scope, rid: str, route: str, status: int, seconds: float, key_id: str | None) -> None:
    client = scope.get("client")
    address = f"{client[0]}:{client[1]}" if client else None
    fields = {
        "request_id": rid, "method": scope["method"], "path": scope["path"], "route": route,
        "status": status, "duration_ms": round(seconds * 1000, 3), "client": address, "key_id": key_id,
    }  # fmt: skip
    logger.info(
        '%s "%s %s" %d %.1f ms [%s]', address, scope["method"], scope["path"], status, seconds * 1000, rid,
        extra=fields,
    )  # fmt: skip
