"""What the service keeps per session and per request: the app runs in this process (its lifespan, an
httpx ASGI transport, no sockets), makes sinusoid sessions in windows (each an /adapt and a /predict) and
then only predicts on those sessions, reporting the growth of this process's RSS per session made and per
prediction, and the Python objects still held per session (``tracemalloc``, by allocation site). Torch
allocates tensors in C++, out of its sight; their bytes are the session cache's (``bench/resident.py``).
Usage: ``python bench/growth.py --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import sys
import tempfile
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import machine, run_and_write, table  # noqa: E402
from bench.soak import QUERY, rss_mb, support  # noqa: E402

CONCURRENT = 16
"""Calls in flight at once, so that the batchers batch as they do under load."""
SITES = 8
"""Allocation sites reported, the largest first."""
FRAMES = 6


async def rounds(count: int, call: Callable[[int], Awaitable[None]]) -> None:
    """``call(i)`` for i below ``count``, ``CONCURRENT`` at a time."""
    for start in range(0, count, CONCURRENT):
        await asyncio.gather(*(call(i) for i in range(start, min(count, start + CONCURRENT))))


def rss_bytes() -> float:
    gc.collect()
    return rss_mb(os.getpid()) * 2**20


async def measure(http: httpx.AsyncClient, args: argparse.Namespace) -> dict[str, Any]:
    rng, sessions = random.Random(0), []

    async def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await http.post(path, json=body)
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        return answer

    async def make(_: int) -> None:
        session = (await post("/adapt", {"support": support(rng), "steps": 1}))["session_id"]
        await post("/predict", {"session_id": session, "x": QUERY})
        sessions.append(session)

    async def predict(i: int) -> None:
        await post("/predict", {"session_id": sessions[i % len(sessions)], "x": QUERY})

    await rounds(args.warmup, make)
    per_session = []
    for window in range(args.windows):
        if window == args.windows - 1:
            tracemalloc.start(FRAMES)
            before = tracemalloc.take_snapshot()
        start = rss_bytes()
        await rounds(args.sessions, make)
        per_session.append((rss_bytes() - start) / args.sessions)
    own = [tracemalloc.Filter(False, __file__, all_frames=True)]  # the session ids this client keeps
    after = tracemalloc.take_snapshot().filter_traces(own)
    before = before.filter_traces(own)
    tracemalloc.stop()
    start = rss_bytes()
    await rounds(args.predictions, predict)
    per_prediction = (rss_bytes() - start) / args.predictions
    held = after.compare_to(before, "traceback")
    return {
        "rss_per_session_bytes": per_session,
        "rss_per_prediction_bytes": per_prediction,
        "python_per_session_bytes": sum(s.size_diff for s in held) / args.sessions,
        "sites": [site(s, args.sessions) for s in held[:SITES]],
    }


def site(difference: tracemalloc.StatisticDiff, sessions: int) -> dict[str, Any]:
    """An allocation site's bytes still held per session, its blocks, and its frames (innermost last)."""
    return {
        "bytes_per_session": difference.size_diff / sessions,
        "blocks": difference.count_diff,
        "where": [f"{f.filename.removeprefix(str(ROOT) + '/')}:{f.lineno}" for f in difference.traceback],
    }


async def served_in_process(args: argparse.Namespace) -> dict[str, Any]:
    from app.config import get_settings
    from app.main import create_app

    with tempfile.TemporaryDirectory() as folder:
        os.environ.update(
            METASERVE_DATA_DIR=str(Path(folder) / "data"),
            METASERVE_MODELS_DIR=str(ROOT / "models"),
            METASERVE_AUTH="false",
            METASERVE_RATE_LIMIT_PER_SECOND="1e9",
            METASERVE_RATE_LIMIT_BURST="1000000000",
        )
        get_settings.cache_clear()
        app = create_app(get_settings())
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://metaserve") as http:
                return await measure(http, args)


def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = {k: getattr(args, k) for k in ("warmup", "sessions", "windows", "predictions")}
    return {"machine": machine(), "settings": settings, **asyncio.run(served_in_process(args))}


def markdown(report: dict[str, Any]) -> str:
    m, s = report["machine"], report["settings"]
    windows = ", ".join(f"{b:,.0f}" for b in report["rss_per_session_bytes"])
    lines = [
        f"# Memory per session and per request, {m['date']}, commit {m['commit']}",
        "",
        f"{m['cpu']}, {m['nproc']} cores, torch {m['torch']}. The app in this process (ASGI transport); "
        f"{s['warmup']:,} sessions of warm-up, then {s['windows']} windows of {s['sessions']:,} sessions (an "
        f"/adapt and a /predict each), then {s['predictions']:,} predictions on those sessions.",
        "",
        f"- RSS per session made, by window: {windows} bytes",
        f"- RSS per prediction on a kept session: {report['rss_per_prediction_bytes']:,.1f} bytes",
        f"- Python objects still held per session (last window): {report['python_per_session_bytes']:,.0f} "
        "bytes",
        "",
        *table(
            ["bytes per session", "blocks", "allocated at (innermost last)"],
            [
                [f"{site['bytes_per_session']:,.0f}", f"{site['blocks']:,}", "<br>".join(site["where"])]
                for site in report["sites"]
            ],
        ),
    ]
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--warmup", type=int, default=2_000, help="sessions made before measuring")
    ap.add_argument("--sessions", type=int, default=4_000, help="sessions made per window")
    ap.add_argument("--windows", type=int, default=4, help="windows; the last one is traced")
    ap.add_argument("--predictions", type=int, default=20_000, help="predictions on kept sessions")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "growth-cpu")
    return ap


def main() -> None:
    run_and_write(parser().parse_args(), run, markdown)


if __name__ == "__main__":
    main()
