"""A typed client of the HTTP API: ``Client`` (sync) and ``AsyncClient`` (async) over httpx.

Both build their requests and read their responses with the same helpers; they differ only in how a
request is sent. A 4xx or 5xx answer raises ``MetaserveError``.

    with Client("http://127.0.0.1:8000") as client:
        session = client.adapt([-2, -1, 0, 1, 2], [-0.909, -0.841, 0, 0.841, 0.909], steps=10)
        print(client.predict([0.5, 1.5], session_id=session.session_id).predictions)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import TypeAdapter

from app.api.schemas import (
    AdaptRequest,
    ModelDetail,
    ModelSummary,
    Prediction,
    PredictRequest,
    Session,
    SessionPage,
    Support,
)

__all__ = ["DEFAULT_URL", "AsyncClient", "Client", "MetaserveError"]

DEFAULT_URL = "http://127.0.0.1:8000"
T = TypeVar("T")


class MetaserveError(Exception):
    """The service answered with an error: ``status`` and the ``detail`` of its JSON body (for a 422, the
    list of ``{loc, msg, type}``)."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class _Call(Generic[T]):
    """One request to send, and how to read its answer."""

    method: str
    path: str
    read: Callable[[httpx.Response], T]
    json: Any = None
    params: dict[str, Any] = field(default_factory=dict)


def _checked(response: httpx.Response) -> httpx.Response:
    if response.is_error:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise MetaserveError(response.status_code, detail)
    return response


def _reader(schema: type[T]) -> Callable[[httpx.Response], T]:
    adapter = TypeAdapter(schema)
    return lambda response: adapter.validate_json(_checked(response).content)


def _nothing(response: httpx.Response) -> None:
    _checked(response)


def _ready(response: httpx.Response) -> bool:
    if response.status_code == httpx.codes.SERVICE_UNAVAILABLE:
        return False
    _checked(response)
    return True


def _session_path(session_id: str) -> str:
    return f"/sessions/{quote(session_id, safe='')}"


class _Calls:
    """The API's endpoints as calls to send."""

    @staticmethod
    def adapt(
        x: list[Any], y: list[Any], model: str | None, steps: int | None, lr: float | None
    ) -> _Call[Session]:
        body = AdaptRequest(model=model, support=Support(x=x, y=y), steps=steps, lr=lr)
        return _Call("POST", "/adapt", _reader(Session), body.model_dump(exclude_none=True))

    @staticmethod
    def predict(x: list[Any], session_id: str | None, model: str | None) -> _Call[Prediction]:
        body = PredictRequest(session_id=session_id, model=model, x=x)
        return _Call("POST", "/predict", _reader(Prediction), body.model_dump(exclude_none=True))

    @staticmethod
    def session(session_id: str) -> _Call[Session]:
        return _Call("GET", _session_path(session_id), _reader(Session))

    @staticmethod
    def delete_session(session_id: str) -> _Call[None]:
        return _Call("DELETE", _session_path(session_id), _nothing)

    @staticmethod
    def sessions(page: int, size: int) -> _Call[SessionPage]:
        return _Call("GET", "/sessions", _reader(SessionPage), params={"page": page, "size": size})

    @staticmethod
    def models() -> _Call[list[ModelSummary]]:
        return _Call("GET", "/models", _reader(list[ModelSummary]))

    @staticmethod
    def model(name: str) -> _Call[ModelDetail]:
        return _Call("GET", f"/models/{quote(name, safe='')}", _reader(ModelDetail))

    @staticmethod
    def ready() -> _Call[bool]:
        return _Call("GET", "/health/ready", _ready)


class Client:
    """The API over a blocking ``httpx.Client`` (its own for ``base_url``, or ``http`` as given)."""

    def __init__(
        self, base_url: str = DEFAULT_URL, timeout: float = 60.0, http: httpx.Client | None = None
    ) -> None:
        self.http = http or httpx.Client(base_url=base_url, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _send(self, call: _Call[T]) -> T:
        return call.read(self.http.request(call.method, call.path, json=call.json, params=call.params))

    def adapt(
        self, x: list[Any], y: list[Any], model: str | None = None, steps: int | None = None,
        lr: float | None = None,
    ) -> Session:  # fmt: skip
        """POST /adapt: a new session, ``model`` adapted to the support set ``(x, y)``."""
        return self._send(_Calls.adapt(x, y, model, steps, lr))

    def predict(self, x: list[Any], session_id: str | None = None, model: str | None = None) -> Prediction:
        """POST /predict: the session's (or the un-adapted ``model``'s) predictions on ``x``."""
        return self._send(_Calls.predict(x, session_id, model))

    def session(self, session_id: str) -> Session:
        return self._send(_Calls.session(session_id))

    def delete_session(self, session_id: str) -> None:
        return self._send(_Calls.delete_session(session_id))

    def sessions(self, page: int = 1, size: int = 50) -> SessionPage:
        return self._send(_Calls.sessions(page, size))

    def models(self) -> list[ModelSummary]:
        return self._send(_Calls.models())

    def model(self, name: str) -> ModelDetail:
        return self._send(_Calls.model(name))

    def ready(self) -> bool:
        """Whether the service has loaded its models (False while it starts or stops)."""
        return self._send(_Calls.ready())


class AsyncClient:
    """The API over an ``httpx.AsyncClient`` (its own for ``base_url``, or ``http`` as given)."""

    def __init__(
        self, base_url: str = DEFAULT_URL, timeout: float = 60.0, http: httpx.AsyncClient | None = None
    ) -> None:
        self.http = http or httpx.AsyncClient(base_url=base_url, timeout=timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _send(self, call: _Call[T]) -> T:
        return call.read(await self.http.request(call.method, call.path, json=call.json, params=call.params))

    async def adapt(
        self, x: list[Any], y: list[Any], model: str | None = None, steps: int | None = None,
        lr: float | None = None,
    ) -> Session:  # fmt: skip
        """POST /adapt: a new session, ``model`` adapted to the support set ``(x, y)``."""
        return await self._send(_Calls.adapt(x, y, model, steps, lr))

    async def predict(
        self, x: list[Any], session_id: str | None = None, model: str | None = None
    ) -> Prediction:
        """POST /predict: the session's (or the un-adapted ``model``'s) predictions on ``x``."""
        return await self._send(_Calls.predict(x, session_id, model))

    async def session(self, session_id: str) -> Session:
        return await self._send(_Calls.session(session_id))

    async def delete_session(self, session_id: str) -> None:
        return await self._send(_Calls.delete_session(session_id))

    async def sessions(self, page: int = 1, size: int = 50) -> SessionPage:
        return await self._send(_Calls.sessions(page, size))

    async def models(self) -> list[ModelSummary]:
        return await self._send(_Calls.models())

    async def model(self, name: str) -> ModelDetail:
        return await self._send(_Calls.model(name))

    async def ready(self) -> bool:
        """Whether the service has loaded its models (False while it starts or stops)."""
        return await self._send(_Calls.ready())
