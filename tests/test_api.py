"""The HTTP API through the ASGI app (httpx, with the lifespan run as uvicorn runs it) on the shipped models:
adapt and predict for regression and classification, sessions, models, health, and errors as 4xx."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import torch
from fastapi import FastAPI

from app.api.schemas import Classification, Prediction
from app.client import AsyncClient, MetaserveError
from app.config import Settings
from app.main import create_app
from tests.conftest import http_to
from tests.test_serving import GREEK, glyph_png_tasks, sinusoid, strokes

MODELS = Path(__file__).resolve().parents[1] / "models"
pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
async def service(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[FastAPI]:
    """One started service for the module: migrated database, models loaded and warmed up."""
    app = create_app(Settings(data_dir=tmp_path_factory.mktemp("data"), models_dir=MODELS))
    async with app.router.lifespan_context(app):
        yield app


def classifications(prediction: Prediction) -> list[Classification]:
    assert all(isinstance(p, Classification) for p in prediction.predictions)
    return cast(list[Classification], prediction.predictions)


def mse(predictions: list[Any], truth: torch.Tensor) -> float:
    return float((torch.tensor(predictions) - truth).square().mean())


async def test_an_adapted_sinusoid_session_predicts_with_a_fifth_of_the_initializations_error(
    client: AsyncClient,
) -> None:
    x, y, query_x, query_y = sinusoid(seed=21)
    session = await client.adapt(x, y, model="sinusoid", steps=10)
    assert (session.model, session.steps, session.lr, session.support_size) == ("sinusoid@1", 10, 0.01, 10)
    assert session.loss_after < session.loss_before / 10 and session.adapt_ms > 0 and session.labels is None
    assert session.expires > session.created

    adapted = await client.predict(query_x.tolist(), session_id=session.session_id)
    initial = await client.predict(query_x.tolist(), model="sinusoid")
    assert (adapted.model, adapted.session_id, initial.session_id) == ("sinusoid@1", session.session_id, None)
    assert len(adapted.predictions) == 100
    assert mse(adapted.predictions, query_y) * 5 <= mse(initial.predictions, query_y)


async def test_the_default_model_adapts_when_the_request_names_none(client: AsyncClient) -> None:
    x, y, _, _ = sinusoid(seed=22, shots=5)
    assert (await client.adapt(x, y)).model == "sinusoid@1"


async def test_glyph_sessions_from_pngs_are_as_accurate_as_the_card_says(
    client: AsyncClient, glyphs_cache: Path
) -> None:
    """50 meta-test tasks, 5-way 1-shot, 15 queries a class, all sent as PNGs with string labels: the
    accuracy `metaserve eval` recorded (600 tasks) less 2.5 points, some 3.5 standard errors of 50 tasks."""
    card = json.loads((MODELS / "glyphs" / "card.json").read_text())
    recorded = card["metrics"]["test/5-way/1-shot/5-step"]["metaserve"]["accuracy"]["mean"]
    right = total = 0
    for support, labels, queries, truths in glyph_png_tasks(glyphs_cache, seed=6, tasks=50, queries=15):
        names = list(dict.fromkeys(labels))
        session = await client.adapt(support, labels, "glyphs")
        assert session.labels == names and session.model == "glyphs@1"
        answer = await client.predict(queries, session_id=session.session_id)
        for guess, truth in zip(classifications(answer), truths, strict=True):
            assert set(guess.probabilities) == set(names)
            assert sum(guess.probabilities.values()) == pytest.approx(1, abs=1e-5)
            right += guess.label == truth
            total += 1
    assert total == 50 * 5 * 15 and right / total >= recorded - 0.025, (right / total, recorded)


async def test_integer_labels_stay_integers_and_the_initialization_names_head_classes_by_number(
    client: AsyncClient,
) -> None:
    session = await client.adapt(strokes(4), [3, "cat", 3, "dog"], model="glyphs")
    assert session.labels == [3, "cat", "dog"]
    answer = await client.predict(strokes(2, seed=1), session_id=session.session_id)
    assert [sorted(a.probabilities) for a in classifications(answer)] == [["3", "cat", "dog"]] * 2
    initial = await client.predict(strokes(2, seed=1), model="glyphs@1")
    assert all(a.label in range(5) for a in classifications(initial))


async def test_a_session_is_read_listed_newest_first_and_deleted(client: AsyncClient) -> None:
    x, y, _, _ = sinusoid(seed=23, shots=5)
    made = [await client.adapt(x, y, steps=2) for _ in range(3)]
    found = await client.session(made[0].session_id)
    assert (found.session_id, found.loss_after, found.created) == (
        made[0].session_id, made[0].loss_after, made[0].created)  # fmt: skip
    assert found.expires == found.last_used + timedelta(days=1)

    first, second = await client.sessions(page=1, size=2), await client.sessions(page=2, size=2)
    assert [s.session_id for s in first.sessions] == [made[2].session_id, made[1].session_id]
    assert second.sessions[0].session_id == made[0].session_id and (second.page, second.size) == (2, 2)

    await client.delete_session(made[1].session_id)
    for call in (client.session, client.delete_session):
        with pytest.raises(MetaserveError) as refused:
            await call(made[1].session_id)
        assert refused.value.status == 404 and made[1].session_id in refused.value.detail
    with pytest.raises(MetaserveError, match="HTTP 404"):
        await client.predict([0.0], session_id=made[1].session_id)


async def test_models_are_listed_with_their_cards_and_metrics(client: AsyncClient) -> None:
    models = {m.ref: m for m in await client.models()}
    assert {"sinusoid@1", "glyphs@1"} <= set(models)
    sine, glyphs = models["sinusoid@1"], models["glyphs@1"]
    assert sine.default and glyphs.default, "each name's only version is its default"
    assert (sine.kind, sine.ways, sine.input_shape, sine.algorithm) == ("regression", 1, [1], "maml")
    assert (glyphs.kind, glyphs.ways, glyphs.input_shape, glyphs.inner.adapts) == (
        "classification", 5, [1, 28, 28], "head")  # fmt: skip

    detail = await client.model("glyphs")
    assert detail.name == "glyphs" and [v.version for v in detail.versions] == [1]
    version = detail.versions[0]
    assert version.card["sha256"] and version.metrics == version.card["metrics"] and version.metrics
    with pytest.raises(MetaserveError) as refused:
        await client.model("nope")
    assert refused.value.status == 404 and "sinusoid" in refused.value.detail


async def test_health_is_live_and_ready_once_started(client: AsyncClient, http: httpx.AsyncClient) -> None:
    assert (await http.get("/health/live")).json() == {"status": "live"}
    assert await client.ready()


async def test_a_service_not_yet_started_is_live_but_not_ready(tmp_path: Path) -> None:
    async with http_to(create_app(Settings(data_dir=tmp_path, models_dir=MODELS))) as http:
        assert (await http.get("/health/live")).status_code == 200
        assert not await AsyncClient(http=http).ready()
        assert (await http.post("/predict", json={"model": "sinusoid", "x": [0]})).status_code == 503


async def test_a_body_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path, models_dir=MODELS, max_body_bytes=1000))
    async with http_to(app) as http:
        response = await http.post("/adapt", json={"support": {"x": [0.5] * 500, "y": [0.5] * 500}})
    assert response.status_code == 413


SUPPORT = {"x": [0.0, 1.0], "y": [0.0, 0.8]}
IN_SUPPORT = ["body", "support"]


def adapting(x: Any, y: Any, **options: Any) -> dict[str, Any]:
    return {"support": {"x": x, "y": y}, **options}


REFUSED = [
    # (path, body, the error's loc): each answered 422 naming the field, as FastAPI's validation does.
    ("/adapt", adapting([], []), [*IN_SUPPORT, "x"]),
    ("/adapt", adapting([1.0, 2.0], [1.0]), [*IN_SUPPORT, "y"]),
    ("/adapt", adapting([1.0, "NaN"], [1, 2]), [*IN_SUPPORT, "x", 1]),
    ("/adapt", adapting([1.0, [2, [3]]], [1, 2]), [*IN_SUPPORT, "x", 1]),
    ("/adapt", adapting([1.0, {"a": 1}], [1, 2]), [*IN_SUPPORT, "x", 1]),
    ("/adapt", adapting([10**400, 1], [1, 2]), [*IN_SUPPORT, "x", 0]),
    ("/adapt", adapting([1e308, 1], [1, 2]), [*IN_SUPPORT, "x", 0]),
    ("/adapt", adapting([1, 2], [1, None]), [*IN_SUPPORT, "y", 1]),
    ("/adapt", adapting([1, 2], [1e30, 1e30]), IN_SUPPORT),
    ("/adapt", adapting({"a": [1]}, [1]), [*IN_SUPPORT, "x"]),
    ("/adapt", {"support": SUPPORT, "steps": 1000}, ["body", "steps"]),
    ("/adapt", {"support": SUPPORT, "steps": 0}, ["body", "steps"]),
    ("/adapt", {"support": SUPPORT, "lr": 1e9}, ["body", "lr"]),
    ("/adapt", {"support": SUPPORT, "steps": 100, "lr": 10}, ["body", "lr"]),
    ("/adapt", {"support": SUPPORT, "model": 5}, ["body", "model"]),
    ("/adapt", {"support": SUPPORT, "stepz": 5}, ["body", "stepz"]),
    ("/adapt", {"support": "garbage"}, IN_SUPPORT),
    ("/adapt", {}, IN_SUPPORT),
    ("/adapt", [], ["body"]),
    ("/adapt", adapting([1.0, 2.0], ["a", "b"], model="glyphs"), [*IN_SUPPORT, "x", 0]),
    ("/adapt", adapting(["bm90IGEgcG5n"], ["a"], model="glyphs"), [*IN_SUPPORT, "x", 0]),
    ("/adapt", adapting(strokes(2), [1.5, 2], model="glyphs"), [*IN_SUPPORT, "y", 0]),
    ("/adapt", adapting(strokes(6), [*GREEK, "zeta"], model="glyphs"), [*IN_SUPPORT, "y"]),
    ("/predict", {"x": [1.0]}, ["body"]),
    ("/predict", {"model": "sinusoid", "session_id": "abc", "x": [1.0]}, ["body"]),
    ("/predict", {"model": "sinusoid", "x": []}, ["body", "x"]),
    ("/predict", {"model": "sinusoid", "x": [[1.0, 2.0]]}, ["body", "x", 0]),
    ("/predict", {"model": "sinusoid", "x": [3e38]}, ["body", "x"]),
    ("/predict", {"model": "sinusoid", "x": [0.0] * 10001}, ["body", "x"]),
    ("/predict", {"model": "sinusoid", "x": [True]}, ["body", "x", 0]),
    ("/predict", {"model": "sinusoid", "x": "0.5"}, ["body", "x"]),
]


@pytest.mark.parametrize(("path", "body", "loc"), REFUSED)
async def test_a_bad_request_is_refused_with_a_422_naming_the_field(
    http: httpx.AsyncClient, path: str, body: Any, loc: list[str | int]
) -> None:
    response = await http.post(path, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == loc, response.text
    assert response.json()["detail"][0]["msg"]


@pytest.mark.parametrize(
    ("method", "path", "content"),
    [
        ("POST", "/adapt", b'{"support": {"x": [NaN, 1], "y": [0, 0]}}'),
        ("POST", "/adapt", b'{"support": {"x": [1e999, 1], "y": [0, 0]}}'),
        ("POST", "/adapt", b'{"support": {"x": [1, 2], "y": [0, Infinity]}}'),
        ("POST", "/adapt", b"not json"),
        ("POST", "/adapt", b'{"support": {"x": ' + b"[" * 5000 + b"]" * 5000 + b', "y": [0]}}'),
        ("POST", "/predict", b'{"model": "sinusoid", "x": [1, 2'),
        ("POST", "/predict", b'{"model": "sinusoid", "x": [' + b"9" * 5000 + b"]}"),
        ("POST", "/predict", b'"just a string"'),
        ("GET", "/sessions?page=0", b""),
        ("GET", "/sessions?size=100000", b""),
        ("GET", "/sessions?page=abc", b""),
        ("GET", "/sessions/no-such-session", b""),
        ("DELETE", "/sessions/no-such-session", b""),
        ("GET", "/models/no-such-model", b""),
    ],
)
async def test_garbage_gets_a_4xx_never_a_5xx(
    http: httpx.AsyncClient, method: str, path: str, content: bytes
) -> None:
    response = await http.request(method, path, content=content, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["detail"]


@pytest.mark.parametrize("path", ["/adapt", "/predict"])
async def test_the_lean_routes_read_bodies_as_fastapi_does(http: httpx.AsyncClient, path: str) -> None:
    """/adapt and /predict skip FastAPI's handler (`app.api.lean`), not its answers to bad bodies."""
    form = await http.post(path, content=b'{"model": "sinusoid"}', headers={"content-type": "text/plain"})
    assert form.status_code == 422 and form.json()["detail"][0]["loc"] == ["body"], form.text
    assert "application/json" in form.json()["detail"][0]["msg"]
    undecodable = await http.post(
        path, content=b'{"x": "\xff\xfe"}', headers={"content-type": "application/json"}
    )
    assert undecodable.status_code == 400, undecodable.text
    broken = await http.post(
        path, content=b'{"x": [1,', headers={"content-type": "application/json; charset=utf-8"}
    )
    assert broken.status_code == 422 and broken.json()["detail"][0]["type"] == "json_invalid", broken.text
    keyless = await http.post(
        path, content=b"{", headers={"content-type": "application/json", "X-API-Key": ""}
    )
    assert keyless.status_code == 401, "the key is checked before the body is read"


async def test_the_lean_routes_are_documented_like_the_others(http: httpx.AsyncClient) -> None:
    paths = (await http.get("/openapi.json")).json()["paths"]
    for path, model, answer in (
        ("/adapt", "AdaptRequest", "Session"),
        ("/predict", "PredictRequest", "Prediction"),
    ):
        operation = paths[path]["post"]
        assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(model)
        assert operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(answer)
        assert operation["security"] == [{"APIKeyHeader": []}]
        assert {"401", "404", "422", "429", "503"} <= set(operation["responses"])


@pytest.mark.parametrize(
    "body",
    [
        {"model": "nope", "support": SUPPORT},
        {"model": "sinusoid@7", "support": SUPPORT},
    ],
)
async def test_an_unknown_model_is_not_found(http: httpx.AsyncClient, body: dict[str, Any]) -> None:
    adapted = await http.post("/adapt", json=body)
    predicted = await http.post("/predict", json={"model": body["model"], "x": [0.0]})
    for response in (adapted, predicted):
        assert response.status_code == 404 and "sinusoid@1" in response.json()["detail"], response.text
