"""The dashboard and playground: static pages at ``/`` that call the JSON API from the browser with the
user's API key. No build step and no CDN: the HTML, CSS and JavaScript under ``static/`` are served as
they are, so the dashboard works offline."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["ASSETS", "PREFIX", "install_dashboard"]

ASSETS = Path(__file__).parent / "static"
"""The dashboard's files, shipped as package data."""
PREFIX = "/dashboard"
"""Where the assets beside the page are served."""


def install_dashboard(app: FastAPI) -> None:
    """Serve the page at ``/`` and its assets under ``PREFIX``, outside the API's schema and its keys: the
    page holds no data, and every call it makes sends the key the user gave it."""

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(ASSETS / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount(PREFIX, StaticFiles(directory=ASSETS), name="dashboard")
