"""Batched serving: concurrent /adapt and /predict calls gathered into batches answer exactly as each
call served alone, one bad call fails alone, and the bounded queue refuses, times out and drops calls."""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.config import Settings
from app.main import create_app
from app.serving.batcher import WATCH_AFTER_SECONDS, Batcher
from app.serving.errors import CallerGone, Overloaded, TimedOut
from tests.test_serving import GREEK, sinusoid, strokes

MODELS = Path(__file__).resolve().parents[1] / "models"
pytestmark = pytest.mark.anyio


def doubled(items: Sequence[int]) -> list[int | Exception]:
    return [ValueError(f"x: {i} is odd") if i % 2 else 2 * i for i in items]


async def test_concurrent_calls_run_as_few_batches_with_their_own_results() -> None:
    batcher: Batcher[int, int] = Batcher(doubled, max_batch=8, max_delay=0.05)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(20)), return_exceptions=True)
    assert [r if isinstance(r, int) else str(r) for r in results] == [
        2 * i if i % 2 == 0 else f"x: {i} is odd" for i in range(20)
    ]
    assert batcher.stats.calls == 20 and batcher.stats.batches == 3, "20 calls in batches of at most 8"
    assert batcher.in_flight == 0
    await batcher.close()


async def test_batching_off_runs_every_call_alone() -> None:
    batcher: Batcher[int, int] = Batcher(doubled, batching=False)
    assert await asyncio.gather(*(batcher.submit(2 * i) for i in range(5))) == [0, 4, 8, 12, 16]
    assert batcher.stats.batches == batcher.stats.calls == 5


def gated(gate: threading.Event, ran: list[int]) -> Callable[[Sequence[int]], list[int | Exception]]:
    """A batch function that holds every batch until ``gate`` opens, recording what it ran."""

    def run(items: Sequence[int]) -> list[int | Exception]:
        gate.wait(10)
        ran.extend(items)
        return [2 * i for i in items]

    return run


async def test_a_full_queue_refuses_at_once_and_frees_its_slots() -> None:
    gate, ran = threading.Event(), []
    batcher: Batcher[int, int] = Batcher(gated(gate, ran), max_queue=3)
    waiting = [asyncio.ensure_future(batcher.submit(2)) for _ in range(3)]
    await asyncio.sleep(0.05)
    with pytest.raises(Overloaded) as refused:
        await batcher.submit(2)
    assert refused.value.retry_after >= 1 and batcher.stats.overloaded == 1
    gate.set()
    assert await asyncio.gather(*waiting) == [4, 4, 4]
    assert await batcher.submit(4) == 8, "the slots are free once answered"


async def test_a_call_waits_no_longer_than_the_timeout() -> None:
    def slow(items: Sequence[int]) -> list[int | Exception]:
        time.sleep(0.5)
        return list(items)

    batcher: Batcher[int, int] = Batcher(slow, timeout=0.1)
    with pytest.raises(TimedOut):
        await batcher.submit(1)
    assert batcher.stats.timed_out == 1 and batcher.in_flight == 0


async def test_a_call_whose_caller_left_is_dropped_unrun() -> None:
    gate, ran = threading.Event(), []
    batcher: Batcher[int, int] = Batcher(gated(gate, ran))
    busy = asyncio.ensure_future(batcher.submit(1))  # holds the worker while the next call waits
    await asyncio.sleep(0.05)
    with pytest.raises(CallerGone):
        await batcher.submit(2, lambda: asyncio.sleep(0.05))
    gate.set()
    assert await busy == 2 and await batcher.submit(3) == 6
    assert ran == [1, 3] and batcher.stats.abandoned == 1


async def test_calls_answered_quickly_never_watch_for_their_callers() -> None:
    watched: list[int] = []

    def gone(i: int) -> Callable[[], Awaitable[None]]:
        async def left() -> None:
            watched.append(i)
            await asyncio.Event().wait()

        return left

    batcher: Batcher[int, int] = Batcher(doubled, max_batch=8)
    assert await asyncio.gather(*(batcher.submit(2 * i, gone(i)) for i in range(20))) == [
        4 * i for i in range(20)
    ]
    await asyncio.sleep(2 * WATCH_AFTER_SECONDS)
    assert watched == [], "a watcher (a task reading the connection) only for a call that waits"
    await batcher.close()


# Through the HTTP API of a started service.


@pytest.fixture(scope="module")
async def service(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[FastAPI]:
    # Steps past the default limit let one adaptation hold the batcher for a second (see below).
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("data"), models_dir=MODELS, max_batch_delay_ms=20, max_steps=2000
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


async def adapt_all(http: httpx.AsyncClient, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    return await asyncio.gather(*(http.post("/adapt", json=body) for body in bodies))


async def test_concurrent_adapt_and_predict_match_calls_served_one_by_one(
    service: FastAPI, http: httpx.AsyncClient
) -> None:
    bodies: list[dict[str, Any]] = []
    for seed in range(12):
        x, y, _, _ = sinusoid(seed, shots=3 + seed % 5)
        bodies.append({"model": "sinusoid", "support": {"x": x, "y": y}, "steps": 5})
    for seed in range(6):
        labels = GREEK * (1 + seed % 2)
        bodies.append({"model": "glyphs", "support": {"x": strokes(len(labels), seed), "y": labels}})
    adapting = service.state.adapting
    batches = adapting.stats.batches
    together = await adapt_all(http, bodies)
    assert all(r.status_code == 200 for r in together), [r.text for r in together]
    assert adapting.stats.batches - batches < len(bodies) / 2, "concurrent calls shared batches"
    alone = [(await http.post("/adapt", json=body)) for body in bodies]

    queries = [{"x": [-4.0, -1.0, 0.5, 3.0][: 1 + i % 4]} for i in range(12)] + [{"x": strokes(3, 9)}] * 6
    predicting = service.state.predicting
    batches = predicting.stats.batches
    sessions = [r.json()["session_id"] for r in together] + [r.json()["session_id"] for r in alone]
    calls = [{"session_id": s, **q} for s, q in zip(sessions, queries + queries, strict=True)]
    answers = await asyncio.gather(*(http.post("/predict", json=call) for call in calls))
    assert predicting.stats.batches - batches < len(calls) / 2
    for a, b, c in zip(together, alone, answers[: len(bodies)], strict=True):
        assert a.json()["loss_after"] == pytest.approx(b.json()["loss_after"], rel=1e-4)
        assert c.status_code == 200
    for batched, single in zip(answers[: len(bodies)], answers[len(bodies) :], strict=True):
        assert_close(batched.json()["predictions"], single.json()["predictions"])


def assert_close(found: Any, expected: Any) -> None:
    """Predictions equal within float tolerance: numbers, or labels with their probabilities."""
    if isinstance(expected, dict):
        assert found["label"] == expected["label"]
        assert found["probabilities"] == pytest.approx(expected["probabilities"], rel=1e-4, abs=1e-6)
    elif isinstance(expected, list):
        assert len(found) == len(expected)
        for f, e in zip(found, expected, strict=True):
            assert_close(f, e)
    else:
        assert found == pytest.approx(expected, rel=1e-4, abs=1e-6)


async def test_a_bad_call_fails_alone_in_its_batch(http: httpx.AsyncClient) -> None:
    x, y, _, _ = sinusoid(1)
    good = {"model": "sinusoid", "support": {"x": x, "y": y}}
    bad = {"model": "sinusoid", "support": {"x": x, "y": y[:-1]}}
    diverging = {"model": "sinusoid", "support": {"x": x, "y": [1e30] * len(y)}}
    responses = await adapt_all(http, [good, bad, good, diverging])
    assert [r.status_code for r in responses] == [200, 422, 200, 422]
    assert responses[1].json()["detail"][0]["loc"] == ["body", "support", "y"]
    session = responses[0].json()["session_id"]
    calls = [
        {"session_id": session, "x": [0.0]},
        {"session_id": "no-such-session", "x": [0.0]},
        {"session_id": session, "x": [[0.0, 1.0]]},
        {"model": "sinusoid", "x": [1.0]},
        {"model": "nonesuch", "x": [1.0]},
    ]
    answers = await asyncio.gather(*(http.post("/predict", json=c) for c in calls))
    assert [a.status_code for a in answers] == [200, 404, 422, 200, 404]


async def test_a_full_queue_answers_503_with_retry_after(service: FastAPI, http: httpx.AsyncClient) -> None:
    predicting = service.state.predicting
    bound, predicting.max_queue = predicting.max_queue, 0  # as if the queue were full
    try:
        refused = await http.post("/predict", json={"model": "sinusoid", "x": [0.0]})
    finally:
        predicting.max_queue = bound
    assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
    assert (await http.post("/predict", json={"model": "sinusoid", "x": [0.0]})).status_code == 200


async def session_ids(http: httpx.AsyncClient) -> set[str]:
    return {s["session_id"] for s in (await http.get("/sessions", params={"size": 1000})).json()["sessions"]}


async def test_an_adapt_whose_client_left_opens_no_session(service: FastAPI, http: httpx.AsyncClient) -> None:
    x, y, _, _ = sinusoid(2)
    body = json.dumps({"model": "sinusoid", "support": {"x": x, "y": y}}).encode()
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.sleep(0.005)  # the client hangs up while its call waits for a batch
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    before = await session_ids(http)
    abandoned = service.state.adapting.stats.abandoned
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "path": "/adapt",
        "raw_path": b"/adapt",
        "query_string": b"",
        "root_path": "",
        "scheme": "http",
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-api-key", http.headers["x-api-key"].encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("metaserve", 80),
        "state": {},
        "app": service,
    }
    # A long adaptation holds the batcher, so the call waits in the queue when its client hangs up, longer
    # than the batcher takes to watch for that (WATCH_AFTER_SECONDS).
    long_x = [i / 100 - 5 for i in range(1000)]
    long = {"model": "sinusoid", "support": {"x": long_x, "y": [math.sin(v) for v in long_x]}, "steps": 2000}
    adapting = service.state.adapting
    holding = asyncio.ensure_future(http.post("/adapt", json=long))
    while adapting.in_flight == 0 or adapting.waiting:  # until its batch is running
        await asyncio.sleep(0.001)
    await service(scope, receive, send)
    assert (await holding).status_code == 200
    assert service.state.adapting.stats.abandoned == abandoned + 1
    assert sent[0]["status"] == 499
    assert len(await session_ids(http) - before) == 1, "only the long adaptation opened a session"


async def test_concurrent_deletes_of_one_session_delete_it_once(http: httpx.AsyncClient) -> None:
    x, y, _, _ = sinusoid(3)
    session = (await http.post("/adapt", json={"model": "sinusoid", "support": {"x": x, "y": y}})).json()
    deletes = await asyncio.gather(*(http.delete(f"/sessions/{session['session_id']}") for _ in range(8)))
    assert sorted(r.status_code for r in deletes) == [204] + [404] * 7
