"""GET /metrics: the service's Prometheus metrics, open like /health (no tenant data: no key, session or job
id is ever a label); see ``app.api.metrics``."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.metrics import Metrics

__all__ = ["router"]

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    """The metrics in Prometheus' text format; a plain function, so that the jobs' query at each scrape
    runs in a worker thread, off the event loop."""
    found: Metrics = request.app.state.metrics
    return Response(generate_latest(found.registry), media_type=CONTENT_TYPE_LATEST)
