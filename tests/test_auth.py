"""API keys through the ASGI app: every resource another key made is a 404 to it, lists show a key its
own, a missing, wrong or revoked key is a 401 with WWW-Authenticate, only an admin key promotes, health
is open; the first start's admin key file; and ``metaserve keys`` create, list and revoke."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from app.api.auth import KeyCache
from app.cli import app as cli
from app.config import Settings, get_settings
from app.db.engine import make_engine, make_session_factory
from app.keys import ADMIN_KEY_FILE, Caller, create_key
from app.main import create_app
from tests.conftest import http_to, sinusoid_only
from tests.test_datasets import labelled, npz
from tests.test_serving import sinusoid

MODELS = Path(__file__).resolve().parents[1] / "models"
LONG_JOB = {"name": "mine", "family": "sinusoid", "iterations": 1_000_000, "meta_batch": 4, "val_tasks": 20}
pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
async def service(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[FastAPI]:
    """One started service for the module, serving the sinusoid only; revocation is seen at once."""
    root = tmp_path_factory.mktemp("auth")
    app = create_app(Settings(data_dir=root / "data", models_dir=sinusoid_only(root), key_cache_seconds=0))
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture(scope="module")
def database(service: FastAPI) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(service.state.settings.database_url_resolved)
    yield make_session_factory(engine)
    engine.dispose()


def keyed(service: FastAPI, key: str | None) -> httpx.AsyncClient:
    """A client of ``service`` that sends ``key`` (nothing when None)."""
    client = http_to(service)
    client.headers.pop("X-API-Key", None)
    if key is not None:
        client.headers["X-API-Key"] = key
    return client


@pytest.fixture(scope="module")
def keys(database: sessionmaker[Session]) -> dict[str, str]:
    """Two users' keys, ``alice`` and ``bob``."""
    return {name: create_key(database, name)[1] for name in ("alice", "bob")}


async def test_the_first_start_saves_a_working_admin_key_readable_by_its_owner_only(
    service: FastAPI,
) -> None:
    saved = service.state.settings.data_dir / ADMIN_KEY_FILE
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    async with http_to(service) as admin:
        assert admin.headers["X-API-Key"] == saved.read_text().strip()
        assert (await admin.get("/models")).status_code == 200


@pytest.mark.parametrize("key", [None, "", "ms_0123456789abcdef_" + "x" * 43, "not-a-key"])
async def test_a_missing_or_wrong_key_gets_401_with_www_authenticate(
    service: FastAPI, key: str | None
) -> None:
    async with keyed(service, key) as http:
        for method, path in [("GET", "/models"), ("GET", "/sessions"), ("POST", "/adapt"), ("GET", "/jobs")]:
            response = await http.request(method, path, json={})
            assert response.status_code == 401, (method, path, response.text)
            assert response.headers["WWW-Authenticate"] == "ApiKey"
        assert (await http.get("/health/live")).status_code == 200
        assert (await http.get("/health/ready")).status_code == 200


async def test_another_keys_sessions_are_404_to_every_route_and_missing_from_its_list(
    service: FastAPI, keys: dict[str, str]
) -> None:
    x, y, query_x, _ = sinusoid(seed=41, shots=5)
    async with keyed(service, keys["alice"]) as alice, keyed(service, keys["bob"]) as bob:
        made = await alice.post("/adapt", json={"model": "sinusoid", "support": {"x": x, "y": y}})
        assert made.status_code == 200, made.text
        session_id = made.json()["session_id"]
        query = {"session_id": session_id, "x": query_x[:3].tolist()}
        assert (await bob.get(f"/sessions/{session_id}")).status_code == 404
        assert (await bob.post("/predict", json=query)).status_code == 404
        assert (await bob.delete(f"/sessions/{session_id}")).status_code == 404
        assert session_id not in {s["session_id"] for s in (await bob.get("/sessions")).json()["sessions"]}
        assert session_id in {s["session_id"] for s in (await alice.get("/sessions")).json()["sessions"]}
        assert (await alice.post("/predict", json=query)).status_code == 200
        async with http_to(service) as admin:  # an admin key sees every key's sessions
            assert (await admin.get(f"/sessions/{session_id}")).status_code == 200
        assert (await alice.delete(f"/sessions/{session_id}")).status_code == 204


async def test_another_keys_datasets_are_404_to_every_route_and_to_its_jobs(
    service: FastAPI, keys: dict[str, str]
) -> None:
    async with keyed(service, keys["alice"]) as alice, keyed(service, keys["bob"]) as bob:
        files = {"file": ("mine.npz", npz(**labelled(50)))}
        made = await alice.post("/datasets", files=files, data={"name": "mine", "format": "npz"})
        assert made.status_code == 201, made.text
        dataset_id = made.json()["dataset_id"]
        assert (await bob.get(f"/datasets/{dataset_id}")).status_code == 404
        assert (await bob.delete(f"/datasets/{dataset_id}")).status_code == 404
        assert dataset_id not in {d["dataset_id"] for d in (await bob.get("/datasets")).json()}
        borrowed = await bob.post(
            "/jobs", json={"name": "theirs", "dataset_id": dataset_id, "iterations": 10}
        )
        assert borrowed.status_code == 422 and borrowed.json()["detail"][0]["loc"] == ["body", "dataset_id"]
        assert dataset_id in {d["dataset_id"] for d in (await alice.get("/datasets")).json()}
        assert (await alice.delete(f"/datasets/{dataset_id}")).status_code == 204


async def test_another_keys_jobs_are_404_to_every_route_and_missing_from_its_list(
    service: FastAPI, keys: dict[str, str]
) -> None:
    async with keyed(service, keys["alice"]) as alice, keyed(service, keys["bob"]) as bob:
        made = await alice.post("/jobs", json=LONG_JOB)
        assert made.status_code == 201, made.text
        job_id = made.json()["job_id"]
        for method, path in [
            ("GET", f"/jobs/{job_id}"),
            ("GET", f"/jobs/{job_id}/metrics"),
            ("GET", f"/jobs/{job_id}/events"),
            ("POST", f"/jobs/{job_id}/cancel"),
        ]:
            assert (await bob.request(method, path)).status_code == 404, (method, path)
        assert job_id not in {j["job_id"] for j in (await bob.get("/jobs")).json()["jobs"]}
        assert job_id in {j["job_id"] for j in (await alice.get("/jobs")).json()["jobs"]}
        cancelled = await alice.post(f"/jobs/{job_id}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"


async def test_only_an_admin_key_may_promote_a_model(service: FastAPI, keys: dict[str, str]) -> None:
    async with keyed(service, keys["alice"]) as alice:
        refused = await alice.post("/models/sinusoid/promote", json={"version": 1})
    assert refused.status_code == 403, refused.text
    async with http_to(service) as admin:
        assert (await admin.post("/models/sinusoid/promote", json={"version": 1})).status_code == 200


@pytest.fixture
def configured(service: FastAPI, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The METASERVE_* environment of ``service``, for the command line."""
    monkeypatch.setenv("METASERVE_DATA_DIR", str(service.state.settings.data_dir))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


async def test_keys_made_listed_and_revoked_on_the_command_line(service: FastAPI, configured: None) -> None:
    made = CliRunner().invoke(cli, ["keys", "create", "carol"])
    assert made.exit_code == 0, made.output
    key = made.output.strip().splitlines()[-1]
    assert key.startswith("ms_") and len(key.split()) == 1
    async with keyed(service, key) as carol:
        assert (await carol.get("/sessions")).status_code == 200
        listed = CliRunner().invoke(cli, ["keys", "list"])
        assert listed.exit_code == 0 and "carol" in listed.output and "admin" in listed.output
        assert key.split("_", 2)[2] not in listed.output
        assert CliRunner().invoke(cli, ["keys", "create", "carol"]).exit_code == 2  # names are unique
        revoked = CliRunner().invoke(cli, ["keys", "revoke", "carol"])
        assert revoked.exit_code == 0, revoked.output
        response = await carol.get("/sessions")
        assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "ApiKey"
    assert CliRunner().invoke(cli, ["keys", "revoke", "nobody"]).exit_code == 2


async def test_with_auth_off_no_key_is_needed_and_no_admin_key_is_made(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path, models_dir=MODELS, auth=False))
    async with app.router.lifespan_context(app), http_to(app) as http:
        assert "X-API-Key" not in http.headers
        x, y, _, _ = sinusoid(seed=42, shots=5)
        assert (await http.post("/adapt", json={"support": {"x": x, "y": y}})).status_code == 200
        assert (await http.post("/models/sinusoid/promote", json={"version": 1})).status_code == 200
    assert not (tmp_path / ADMIN_KEY_FILE).exists()


async def test_requests_that_find_a_key_expired_together_share_one_query(
    database: sessionmaker[Session], keys: dict[str, str]
) -> None:
    now, asked = [0.0], []

    class Counted(KeyCache):
        def verified(self, key: str) -> Caller | None:
            asked.append(key)
            return super().verified(key)

    cache = Counted(database, ttl=5, clock=lambda: now[0])
    together = await asyncio.gather(*(cache.checked(keys["alice"]) for _ in range(32)))
    assert len(asked) == 1 and {c.name for c in together if c is not None} == {"alice"}
    assert await cache.checked(keys["alice"]) == together[0] and len(asked) == 1, "trusted for ttl seconds"
    now[0] = 5.5
    await asyncio.gather(*(cache.checked(keys["alice"]) for _ in range(32)))
    assert len(asked) == 2, "once expired, asked again, once"
    wrong = keys["alice"][:-4] + "xxxx"
    assert await asyncio.gather(cache.checked(wrong), cache.checked(wrong)) == [None, None]
    assert await cache.checked(wrong) is None and len(asked) == 4, "a refused key is never remembered"
