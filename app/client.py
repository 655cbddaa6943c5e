"""A typed client of the HTTP API: ``Client`` (sync) and ``AsyncClient`` (async) over httpx.

Both build their requests and read their responses with the same helpers; they differ only in how a
request is sent. A 4xx or 5xx answer raises ``MetaserveError``.

    with Client("http://127.0.0.1:8000", api_key=Path("data/admin-key").read_text().strip()) as client:
        session = client.adapt([-2, -1, 0, 1, 2], [-0.909, -0.841, 0, 0.841, 0.909], steps=10)
        print(client.predict([0.5, 1.5], session_id=session.session_id).predictions)
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import TypeAdapter

from app.api.schemas import (
    AdaptRequest,
    Dataset,
    Job,
    JobMetric,
    JobPage,
    JobSpec,
    ModelDetail,
    ModelSummary,
    Prediction,
    PredictRequest,
    Promote,
    Session,
    SessionPage,
    Support,
)

__all__ = ["API_KEY_HEADER", "DEFAULT_URL", "AsyncClient", "Client", "JobEvent", "MetaserveError"]

DEFAULT_URL = "http://127.0.0.1:8000"
API_KEY_HEADER = "X-API-Key"
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
    data: dict[str, Any] | None = None
    files: dict[str, tuple[str, IO[bytes]]] | None = None

    @property
    def options(self) -> dict[str, Any]:
        """The request's body and query, as httpx's ``request`` takes them."""
        return {"json": self.json, "params": self.params, "data": self.data, "files": self.files}


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


@dataclass(frozen=True)
class JobEvent:
    """One event of GET /jobs/{id}/events: ``kind`` is ``job``, ``metric`` or ``end``."""

    kind: str
    data: dict[str, Any]


@dataclass
class _EventLines:
    """Server-Sent Events from a stream's lines: ``feed`` each line, get an event at each blank line."""

    kind: str = "message"
    data: list[str] = field(default_factory=list)

    def feed(self, line: str) -> JobEvent | None:
        if line:
            name, _, value = line.partition(":")
            if name == "event":
                self.kind = value.strip()
            elif name == "data":
                self.data.append(value.removeprefix(" "))
            return None
        if not self.data:
            return None
        event = JobEvent(self.kind, json.loads("\n".join(self.data)))
        self.kind, self.data = "message", []
        return event


def _item(collection: str, item_id: str) -> str:
    """The path of one session, dataset or job, its id quoted."""
    return f"/{collection}/{quote(item_id, safe='')}"


@contextmanager
def _upload(source: Path | str | bytes) -> Iterator[tuple[str, IO[bytes]]]:
    """The file part of a dataset upload: a file, opened to stream from, or bytes (give their format)."""
    if isinstance(source, bytes):
        yield "upload", io.BytesIO(source)
        return
    with open(source, "rb") as file:
        yield Path(source).name, file


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
        return _Call("GET", _item("sessions", session_id), _reader(Session))

    @staticmethod
    def delete_session(session_id: str) -> _Call[None]:
        return _Call("DELETE", _item("sessions", session_id), _nothing)

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
    def upload_dataset(
        file: tuple[str, IO[bytes]], name: str, format: str | None, ways: int | None, shots: int | None,
        queries: int | None,
    ) -> _Call[Dataset]:  # fmt: skip
        fields = {"name": name, "format": format, "ways": ways, "shots": shots, "queries": queries}
        data = {key: value for key, value in fields.items() if value is not None}
        return _Call("POST", "/datasets", _reader(Dataset), data=data, files={"file": file})

    @staticmethod
    def datasets() -> _Call[list[Dataset]]:
        return _Call("GET", "/datasets", _reader(list[Dataset]))

    @staticmethod
    def dataset(dataset_id: str) -> _Call[Dataset]:
        return _Call("GET", _item("datasets", dataset_id), _reader(Dataset))

    @staticmethod
    def delete_dataset(dataset_id: str) -> _Call[None]:
        return _Call("DELETE", _item("datasets", dataset_id), _nothing)

    @staticmethod
    def submit_job(spec: JobSpec) -> _Call[Job]:
        return _Call("POST", "/jobs", _reader(Job), spec.model_dump(exclude_none=True))

    @staticmethod
    def jobs(page: int, size: int) -> _Call[JobPage]:
        return _Call("GET", "/jobs", _reader(JobPage), params={"page": page, "size": size})

    @staticmethod
    def job(job_id: str) -> _Call[Job]:
        return _Call("GET", _item("jobs", job_id), _reader(Job))

    @staticmethod
    def job_metrics(job_id: str, after: int) -> _Call[list[JobMetric]]:
        return _Call(
            "GET", f"{_item('jobs', job_id)}/metrics", _reader(list[JobMetric]), params={"after": after}
        )

    @staticmethod
    def cancel_job(job_id: str) -> _Call[Job]:
        return _Call("POST", f"{_item('jobs', job_id)}/cancel", _reader(Job))

    @staticmethod
    def promote(name: str, version: int) -> _Call[ModelSummary]:
        path = f"/models/{quote(name, safe='')}/promote"
        return _Call("POST", path, _reader(ModelSummary), Promote(version=version).model_dump())

    @staticmethod
    def ready() -> _Call[bool]:
        return _Call("GET", "/health/ready", _ready)


class Client:
    """The API over a blocking ``httpx.Client`` (its own for ``base_url``, or ``http`` as given), sending
    ``api_key`` in every request's ``X-API-Key``."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        timeout: float = 60.0,
        http: httpx.Client | None = None,
        api_key: str | None = None,
    ) -> None:
        self.http = http or httpx.Client(base_url=base_url, timeout=timeout)
        if api_key is not None:
            self.http.headers[API_KEY_HEADER] = api_key

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _send(self, call: _Call[T]) -> T:
        return call.read(self.http.request(call.method, call.path, **call.options))

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

    def upload_dataset(
        self, source: Path | str | bytes, name: str, format: str | None = None, ways: int | None = None,
        shots: int | None = None, queries: int | None = None,
    ) -> Dataset:  # fmt: skip
        """POST /datasets: store the file at ``source`` (or its bytes) as dataset ``name`` once it passes the
        checks for ``ways``-way tasks of ``shots`` + ``queries`` (the service's defaults when None)."""
        with _upload(source) as file:
            return self._send(_Calls.upload_dataset(file, name, format, ways, shots, queries))

    def datasets(self) -> list[Dataset]:
        return self._send(_Calls.datasets())

    def dataset(self, dataset_id: str) -> Dataset:
        return self._send(_Calls.dataset(dataset_id))

    def delete_dataset(self, dataset_id: str) -> None:
        return self._send(_Calls.delete_dataset(dataset_id))

    def submit_job(self, spec: JobSpec) -> Job:
        """POST /jobs: queue a meta-training job."""
        return self._send(_Calls.submit_job(spec))

    def jobs(self, page: int = 1, size: int = 50) -> JobPage:
        return self._send(_Calls.jobs(page, size))

    def job(self, job_id: str) -> Job:
        return self._send(_Calls.job(job_id))

    def job_metrics(self, job_id: str, after: int = 0) -> list[JobMetric]:
        return self._send(_Calls.job_metrics(job_id, after))

    def cancel_job(self, job_id: str) -> Job:
        return self._send(_Calls.cancel_job(job_id))

    def job_events(self, job_id: str) -> Iterator[JobEvent]:
        """GET /jobs/{id}/events: the job's events as they happen, up to and including ``end``."""
        parser = _EventLines()
        with self.http.stream("GET", f"{_item('jobs', job_id)}/events", timeout=None) as response:
            if response.is_error:
                response.read()
                _checked(response)
            for line in response.iter_lines():
                if (event := parser.feed(line)) is not None:
                    yield event

    def promote(self, name: str, version: int) -> ModelSummary:
        """POST /models/{name}/promote: bare ``name`` gets ``version`` from now on."""
        return self._send(_Calls.promote(name, version))

    def ready(self) -> bool:
        """Whether the service has loaded its models (False while it starts or stops)."""
        return self._send(_Calls.ready())


class AsyncClient:
    """The API over an ``httpx.AsyncClient`` (its own for ``base_url``, or ``http`` as given), sending
    ``api_key`` in every request's ``X-API-Key``."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        timeout: float = 60.0,
        http: httpx.AsyncClient | None = None,
        api_key: str | None = None,
    ) -> None:
        self.http = http or httpx.AsyncClient(base_url=base_url, timeout=timeout)
        if api_key is not None:
            self.http.headers[API_KEY_HEADER] = api_key

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _send(self, call: _Call[T]) -> T:
        return call.read(await self.http.request(call.method, call.path, **call.options))

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

    async def upload_dataset(
        self, source: Path | str | bytes, name: str, format: str | None = None, ways: int | None = None,
        shots: int | None = None, queries: int | None = None,
    ) -> Dataset:  # fmt: skip
        """POST /datasets: store the file at ``source`` (or its bytes) as dataset ``name`` once it passes the
        checks for ``ways``-way tasks of ``shots`` + ``queries`` (the service's defaults when None)."""
        with _upload(source) as file:
            return await self._send(_Calls.upload_dataset(file, name, format, ways, shots, queries))

    async def datasets(self) -> list[Dataset]:
        return await self._send(_Calls.datasets())

    async def dataset(self, dataset_id: str) -> Dataset:
        return await self._send(_Calls.dataset(dataset_id))

    async def delete_dataset(self, dataset_id: str) -> None:
        return await self._send(_Calls.delete_dataset(dataset_id))

    async def submit_job(self, spec: JobSpec) -> Job:
        """POST /jobs: queue a meta-training job."""
        return await self._send(_Calls.submit_job(spec))

    async def jobs(self, page: int = 1, size: int = 50) -> JobPage:
        return await self._send(_Calls.jobs(page, size))

    async def job(self, job_id: str) -> Job:
        return await self._send(_Calls.job(job_id))

    async def job_metrics(self, job_id: str, after: int = 0) -> list[JobMetric]:
        return await self._send(_Calls.job_metrics(job_id, after))

    async def cancel_job(self, job_id: str) -> Job:
        return await self._send(_Calls.cancel_job(job_id))

    async def job_events(self, job_id: str) -> AsyncIterator[JobEvent]:
        """GET /jobs/{id}/events: the job's events as they happen, up to and including ``end``."""
        parser = _EventLines()
        async with self.http.stream("GET", f"{_item('jobs', job_id)}/events", timeout=None) as response:
            if response.is_error:
                await response.aread()
                _checked(response)
            async for line in response.aiter_lines():
                if (event := parser.feed(line)) is not None:
                    yield event

    async def promote(self, name: str, version: int) -> ModelSummary:
        """POST /models/{name}/promote: bare ``name`` gets ``version`` from now on."""
        return await self._send(_Calls.promote(name, version))

    async def ready(self) -> bool:
        """Whether the service has loaded its models (False while it starts or stops)."""
        return await self._send(_Calls.ready())
