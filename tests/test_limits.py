"""Limits: each API key's rate limit (429 with Retry-After, the other keys unaffected, refilled with time),
and a body over the limit refused with 413 by a real server while it still streams in."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fastapi import FastAPI

from app.api.limits import RateLimiter
from app.config import Settings
from app.db.engine import make_engine, make_session_factory
from app.keys import create_key
from app.main import create_app
from tests.conftest import admin_key, http_to, sinusoid_only
from tests.test_serve_e2e import free_port, server_process

BODY_LIMIT = 64 * 1024


def test_a_bucket_lets_a_burst_through_then_refills_at_the_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(per_second=2, burst=3, clock=lambda: now[0])
    assert [limiter.wait("a") for _ in range(4)] == [0, 0, 0, 1]
    assert limiter.wait("b") == 0, "each key has its own bucket"
    now[0] = 0.5  # one token back
    assert [limiter.wait("a") for _ in range(2)] == [0, 1]
    assert RateLimiter(per_second=0, burst=1).wait("a") == 0, "0 turns the limit off"


@pytest.fixture
async def limited(tmp_path: Path) -> AsyncIterator[FastAPI]:
    settings = Settings(
        data_dir=tmp_path / "data",
        models_dir=sinusoid_only(tmp_path),
        rate_limit_per_second=0.01,
        rate_limit_burst=3,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


@pytest.mark.anyio
async def test_a_key_over_its_rate_limit_gets_429_with_retry_after_and_other_keys_do_not(
    limited: FastAPI,
) -> None:
    async with http_to(limited) as admin:
        answers = [(await admin.get("/models")).status_code for _ in range(4)]
        assert answers == [200, 200, 200, 429]
        refused = await admin.get("/sessions")
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
        assert (await admin.get("/health/ready")).status_code == 200, "health is never limited"
        engine = make_engine(limited.state.settings.database_url_resolved)
        admin.headers["X-API-Key"] = create_key(make_session_factory(engine), "other")[1]
        engine.dispose()
        assert (await admin.get("/models")).status_code == 200


def test_a_chunked_body_over_the_limit_gets_413_from_a_real_server_before_it_ends(tmp_path: Path) -> None:
    """The body has no length: the server counts it as it streams and answers 413 while the client still
    has more to send (the last chunk is never sent)."""
    port, environment = (
        free_port(),
        {
            "METASERVE_MODELS_DIR": str(sinusoid_only(tmp_path)),
            "METASERVE_MAX_BODY_BYTES": str(BODY_LIMIT),
        },
    )
    with server_process(tmp_path / "data", port, tmp_path / "serve.log", environment):
        key = admin_key(tmp_path / "data")
        assert key is not None
        with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
            head = (
                f"POST /adapt HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {key}\r\n"
                "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            connection.sendall(head.encode())
            chunk = b'{"support": {"x": [' + b"0.5, " * 4000
            for _ in range(2 * BODY_LIMIT // len(chunk) + 1):
                connection.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            answer = connection.recv(4096).decode()
    assert answer.startswith("HTTP/1.1 413"), answer
