"""Throughput and latency of the service under concurrent clients (wrk, from Debian's packages, on
loopback), batching on vs off, beside the ceiling of the HTTP stack itself: the same server's
``GET /health/live`` under the same load. Usage: ``python bench/load.py --help``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.client import Client  # noqa: E402
from bench.report import machine, run_and_write, table  # noqa: E402
from bench.serve import Server, served  # noqa: E402
from tests.test_serving import GREEK, strokes  # noqa: E402

SCRIPT = ROOT / "bench" / "wrk" / "load.lua"
SESSIONS = 256
"""Sessions opened per model before the load: each client's calls land on many different sessions."""
TARGETS = {"predict_of_ceiling": 0.70, "adapt_of_ceiling": 0.50, "glyph_predict_on_off": 1.5}
SHARED = ("predict", "adapt")
"""The calls whose throughput at 64 clients is a share of the ceiling, each run paired with a ceiling run."""
Load = tuple[str, list[dict[str, Any]] | None]
"""A path and the bodies wrk posts to it in turn (None: GET)."""


def wrk(
    server: Server, path: str, clients: int, seconds: int, bodies: list[dict[str, Any]] | None
) -> dict[str, Any]:
    """One wrk run of ``clients`` connections for ``seconds``: requests/s, latency p50/p99 in ms, errors."""
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl") as lines:
        env = {"PATH": "/usr/bin:/bin"}
        if "X-API-Key" in server.headers:
            env["API_KEY"] = server.headers["X-API-Key"]
        if bodies is not None:
            lines.write("\n".join(json.dumps(b, separators=(",", ":")) for b in bodies))
            lines.flush()
            env["BODIES"] = lines.name
        command = ["wrk", "-t1", f"-c{clients}", f"-d{seconds}s", "--timeout", "30s", "-s", str(SCRIPT),
                   f"{server.url}{path}"]  # fmt: skip
        out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    summary = json.loads(out.split("SUMMARY ", 1)[1])
    return {
        "clients": clients,
        "requests_per_s": summary["requests"] / summary["seconds"],
        "p50_ms": summary["p50_us"] / 1e3,
        "p99_ms": summary["p99_us"] / 1e3,
        "errors": summary["errors"] + summary["status_errors"],
    }


def supports(count: int, seed: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``count`` sinusoid /adapt bodies (10 points each) and ``count`` glyph ones (5-way 1-shot)."""
    rng = random.Random(seed)
    sinusoids = []
    for _ in range(count):
        amplitude, phase = rng.uniform(0.1, 5), rng.uniform(0, 3.14)
        xs = [rng.uniform(-5, 5) for _ in range(10)]
        ys = [amplitude * math.sin(x - phase) for x in xs]
        sinusoids.append({"model": "sinusoid", "support": {"x": xs, "y": ys}})
    glyphs = [{"model": "glyphs", "support": {"x": strokes(5, seed=i), "y": GREEK}} for i in range(count)]
    return sinusoids, glyphs


def loads(server: Server, sinusoids: list[dict[str, Any]], glyphs: list[dict[str, Any]]) -> dict[str, Load]:
    """The path and bodies of each load on ``server``, after opening its sessions."""
    with Client(server.url, timeout=60, api_key=server.headers.get("X-API-Key")) as client:
        sinusoid_sessions = [
            client.adapt(b["support"]["x"], b["support"]["y"], model="sinusoid").session_id for b in sinusoids
        ]
        glyph_sessions = [
            client.adapt(b["support"]["x"], b["support"]["y"], model="glyphs").session_id for b in glyphs[:64]
        ]
    queries = [i / 10 - 5 for i in range(10)]
    return {
        "health": ("/health/live", None),
        "predict": ("/predict", [{"session_id": s, "x": queries} for s in sinusoid_sessions]),
        "adapt": ("/adapt", sinusoids),
        "glyph_predict": ("/predict", [{"session_id": s, "x": strokes(2, seed=7)} for s in glyph_sessions]),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Both servers up at once, every row measured ``rounds`` times, on and off in turn (whichever went
    first goes second the next round): this VM's speed drifts by a quarter within minutes, so only
    figures taken side by side make fair ratios. Each row keeps its median run. For the same reason each
    /predict and /adapt run at 64 clients follows a run of the ceiling, and its share of the ceiling is the
    median over the rounds of the pair's ratio."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk (or make bench-serve installs it)")
    sinusoids, glyphs = supports(SESSIONS)
    plan = [("health", 64), *(("predict", c) for c in args.clients), *(("adapt", c) for c in args.clients),
            ("glyph_predict", 64)]  # fmt: skip
    taken: dict[str, dict[tuple[str, int], list[dict[str, Any]]]] = {"on": {}, "off": {}}
    shares: dict[str, list[float]] = {key: [] for key in SHARED}
    with served(batching="on") as on, served(batching="off") as off:
        sides = {"on": (on, loads(on, sinusoids, glyphs)), "off": (off, loads(off, sinusoids, glyphs))}
        for round_ in range(args.rounds):
            for key, clients in plan:
                for side in ("on", "off") if round_ % 2 == 0 else ("off", "on"):
                    server, paths = sides[side]
                    path, bodies = paths[key]
                    paired = side == "on" and key in SHARED and clients == 64
                    if paired:
                        ceiling = wrk(server, paths["health"][0], 64, args.seconds, None)["requests_per_s"]
                    run = wrk(server, path, clients, args.seconds, bodies)
                    taken[side].setdefault((key, clients), []).append(run)
                    if paired:
                        shares[key].append(run["requests_per_s"] / ceiling)
    servers: dict[str, dict[str, Any]] = {}
    for side, rows in taken.items():
        found: dict[str, Any] = {"batching": side}
        for (key, _), runs in rows.items():
            row = {**median_run(runs), "errors": sum(r["errors"] for r in runs), "rounds": len(runs)}
            if key in ("predict", "adapt"):
                found.setdefault(key, []).append(row)
            else:
                found[key] = row
        servers[side] = found
    on_runs, off_runs = servers["on"], servers["off"]
    ratios = {
        **{f"{key}_of_ceiling": statistics.median(shares[key]) for key in SHARED},
        "glyph_predict_on_off": on_runs["glyph_predict"]["requests_per_s"]
        / off_runs["glyph_predict"]["requests_per_s"],
        "predict_on_off": at(on_runs["predict"], 64)["requests_per_s"]
        / at(off_runs["predict"], 64)["requests_per_s"],
        "adapt_on_off": at(on_runs["adapt"], 64)["requests_per_s"]
        / at(off_runs["adapt"], 64)["requests_per_s"],
    }
    return {
        "machine": machine(),
        "seconds": args.seconds,
        "rounds": args.rounds,
        "servers": servers,
        "shares_of_ceiling": shares,
        "ratios": ratios,
        "targets": {k: {"target": v, "met": ratios[k] >= v} for k, v in TARGETS.items()},
    }


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median throughput (the lower middle one of an even count), latencies with it."""
    return sorted(runs, key=lambda r: r["requests_per_s"])[(len(runs) - 1) // 2]


def at(runs: list[dict[str, Any]], clients: int) -> dict[str, Any]:
    return next(r for r in runs if r["clients"] == clients)


def markdown(report: dict[str, Any]) -> str:
    info, servers, ratios = report["machine"], report["servers"], report["ratios"]
    figures = [f"{side} {what}" for side in ("on", "off") for what in ("req/s", "p50 ms", "p99 ms")]
    header = ["call", "clients", *figures, "on/off", "errors"]
    rows = []
    loads = [("GET /health/live", "health"), ("POST /predict sinusoid", "predict"),
             ("POST /adapt sinusoid", "adapt"), ("POST /predict glyphs", "glyph_predict")]  # fmt: skip
    for name, key in loads:
        on_runs, off_runs = servers["on"][key], servers["off"][key]
        for on, off in zip(*(r if isinstance(r, list) else [r] for r in (on_runs, off_runs)), strict=True):
            rows.append([name, str(on["clients"]), f"{on['requests_per_s']:.0f}", f"{on['p50_ms']:.2f}",
                         f"{on['p99_ms']:.2f}", f"{off['requests_per_s']:.0f}", f"{off['p50_ms']:.2f}",
                         f"{off['p99_ms']:.2f}", f"{on['requests_per_s'] / off['requests_per_s']:.2f}x",
                         str(on["errors"] + off["errors"])])  # fmt: skip
    rounds = "; ".join(
        f"{key} " + ", ".join(f"{share:.2f}" for share in report["shares_of_ceiling"][key]) for key in SHARED
    )
    targets = [
        f"- {name}: {ratios[name]:.2f} (target at least {t['target']:g}: {'met' if t['met'] else 'NOT met'})"
        for name, t in report["targets"].items()
    ]
    return "\n".join([
        f"# Serving under load, {info['date']}, commit {info['commit']}",
        "",
        f"{info['cpu']}. Two `metaserve serve` (one uvicorn worker each), `METASERVE_BATCHING=on` and "
        f"`off`, up at once; wrk (1 thread) on the same machine, {report['seconds']:g} s per run, each row "
        f"run {report['rounds']} times on each server in turn and its median run kept. Each /predict "
        "names one of 256 sinusoid sessions (10 query points) or 64 glyph sessions (2 query images), in "
        "turn; each /adapt posts one of 256 fresh 10-point sinusoids. The ceiling is the same server's "
        "GET /health/live under 64 clients, also run right before each /predict and /adapt run at 64 "
        "clients: their shares of the ceiling are the medians of those pairs' ratios.",
        "",
        *table(header, rows),
        "",
        "Ratios (batching on unless named): /predict and /adapt at 64 clients over the ceiling run before "
        f"each (per round: {rounds}), and on/off.",
        "",
        *targets,
        f"- predict_on_off: {ratios['predict_on_off']:.2f}, adapt_on_off: {ratios['adapt_on_off']:.2f}",
        "",
    ])  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=3, help="length of each wrk run")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each row on each server, in turn")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64, 256])
    ap.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "load-cpu", help="writes OUT.{json,md}"
    )
    args = ap.parse_args()
    if 64 not in args.clients:
        ap.error("--clients must include 64, the point the targets name")
    run_and_write(args, run, markdown)


if __name__ == "__main__":
    main()
