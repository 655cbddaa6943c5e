"""Routes served without FastAPI's per-request machinery: /adapt and /predict, the calls that carry the load.

FastAPI documents such a route from its endpoint's signature, ``(request, body: Model, caller: CallerDep)
-> Model``, as any other; but a request skips its dependency solving, body parsing and response
validation, which took 350 µs of a 900 µs batched /predict on a 2-core CPU (bench/README.md). The route
does the same steps itself: the key (``caller``, which also answers 503 while the service starts or
drains, and 429 past the key's rate limit), then the body, validated by its model with errors located
under "body" as FastAPI locates them, then the endpoint, whose model is the JSON answer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar, get_type_hints

from fastapi import HTTPException, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError

from app.api.deps import API_KEY_HEADER, caller

__all__ = ["LeanRoute"]

Model = TypeVar("Model", bound=BaseModel)
_JSON = re.compile(r"application/([\w.-]+\+)?json\s*(;.*)?", re.IGNORECASE)


class LeanRoute(APIRoute):
    """An ``APIRoute`` documented from its endpoint, served by ``handler`` below. FastAPI runs none of its
    dependencies, the router's included: the key is the one check, and ``handler`` makes it."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint, status_code = self.endpoint, self.status_code or 200
        model: type[BaseModel] = get_type_hints(endpoint)["body"]

        async def handler(request: Request) -> Response:
            found = await caller(request, request.headers.get(API_KEY_HEADER))
            body = await _body(request, model)
            answer: BaseModel = await endpoint(request=request, body=body, caller=found)
            return Response(answer.model_dump_json(), status_code, media_type="application/json")

        return handler


async def _body(request: Request, model: type[Model]) -> Model:
    """The request's JSON body as ``model``. Like FastAPI's strict default, a body without a JSON
    ``Content-Type`` is not read as JSON (a browser's cross-site form post cannot set one); one that is not
    UTF-8 is a 400."""
    raw = await request.body()
    kind = request.headers.get("content-type", "")
    if not _JSON.fullmatch(kind):
        message = f"send JSON with Content-Type application/json, not {kind!r}"
        raise RequestValidationError([{"type": "content_type", "loc": ("body",), "msg": message}])
    try:
        text = raw.decode()  # a 400 as FastAPI's, and no undecodable bytes quoted in a 422
    except UnicodeDecodeError:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "There was an error parsing the body") from None
    try:
        return model.model_validate_json(text)
    except ValidationError as error:
        located = [{**e, "loc": ("body", *e["loc"])} for e in error.errors(include_url=False)]
        raise RequestValidationError(located, body=text) from None
