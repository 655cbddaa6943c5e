"""Latency of /adapt and /predict over real HTTP on loopback (``metaserve serve`` in a subprocess, one client
on one persistent connection) beside the engine alone doing the same work in-process, so that the HTTP and
service overhead shows as the difference. Usage: ``python bench/serve.py --help``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.client import Client  # noqa: E402
from app.evaluation import load_model  # noqa: E402
from app.meta import InnerLoop, TaskBatch, adapt  # noqa: E402
from app.meta.tasks.sinusoid import sinusoid_tasks  # noqa: E402
from bench.report import machine, run_and_write, table  # noqa: E402

MODEL = "sinusoid"
TARGET_MS = 5.0
TARGET = f"p50 /adapt ≤ {TARGET_MS:g} ms on this CPU machine"
READY_SECONDS = 180.0
STATS = ("p50", "p95", "p99", "mean")


def timed(call: Callable[[int], object], warmup: int, calls: int) -> list[float]:
    """Milliseconds (``time.perf_counter``) of ``call(i)`` for ``i`` past ``warmup`` untimed calls."""
    samples = []
    for i in range(warmup + calls):
        started = time.perf_counter()
        call(i)
        samples.append((time.perf_counter() - started) * 1e3)
    return samples[warmup:]


def summary(samples: list[float]) -> dict[str, float]:
    """Percentiles (inclusive method) and mean of per-call milliseconds."""
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {"p50": cuts[49], "p95": cuts[94], "p99": cuts[98], "mean": statistics.fmean(samples)}


def free_port() -> int:
    """A loopback port that nothing listens on now (the server binds it a moment later)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_ready(client: Client, server: subprocess.Popen[bytes], log: Path) -> None:
    """Poll /health/ready until the models are loaded; fail with the server's log if it exits or hangs."""
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"metaserve serve exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if client.ready():
                return
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.2)
    raise RuntimeError(f"metaserve serve not ready after {READY_SECONDS:g} s:\n{log.read_text()[-3000:]}")


class Wire:
    """A minimal keep-alive HTTP/1.1 JSON client (the standard library's ``http.client``), so that what is
    timed is the service, not the client: httpx with pydantic adds about a millisecond per call here."""

    def __init__(self, server: Server) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", server.port)
        self.headers = {"Content-Type": "application/json", **server.headers}

    def post(self, path: str, body: dict[str, Any]) -> Any:
        self.connection.request("POST", path, json.dumps(body), self.headers)
        response = self.connection.getresponse()
        answer = json.loads(response.read())
        if response.status != 200:
            raise RuntimeError(f"POST {path} answered {response.status}: {answer}")
        return answer


@dataclass(frozen=True)
class Server:
    """A started ``metaserve serve``: its process, port and URL, and the headers that carry the admin key
    it wrote on its first start (none with auth off)."""

    process: subprocess.Popen[bytes]
    port: int
    url: str
    headers: dict[str, str]


@contextlib.contextmanager
def served(data_dir: Path | None = None, **settings: str) -> Iterator[Server]:
    """A ``metaserve serve`` on ``data_dir`` (default: a fresh temporary one) and a free loopback port,
    with ``settings`` as METASERVE_* variables (``batching="off"``), ready. Stopped on leaving with
    SIGTERM, which stops its job workers too, then its whole process group is killed."""
    port = free_port()
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="metaserve-bench-")))
        log = data_dir / "server.log"
        env = {**os.environ, "METASERVE_DATA_DIR": str(data_dir), "METASERVE_DEVICE": "cpu"}
        # One key drives all the load, and a stop should not wait: no rate limit, no drain.
        env |= {"METASERVE_RATE_LIMIT_PER_SECOND": "0", "METASERVE_DRAIN_SECONDS": "0"}
        env |= {f"METASERVE_{name.upper()}": value for name, value in settings.items()}
        command = [str(Path(sys.executable).with_name("metaserve")), "serve", "--port", str(port)]
        with log.open("wb") as sink:
            process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            url = f"http://127.0.0.1:{port}"
            with Client(url) as client:
                wait_ready(client, process, log)
            key = data_dir / "admin-key"
            yield Server(process, port, url, {"X-API-Key": key.read_text().strip()} if key.exists() else {})
        finally:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=60)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def over_http(tasks: TaskBatch, warmup: int, calls: int) -> dict[str, list[float]]:
    """Per-call milliseconds of /adapt, /predict (last session) and /predict (model) on the wire, and of
    /adapt through the typed ``app.client.Client``."""
    xs, ys = tasks.support_x.squeeze(-1).tolist(), tasks.support_y.squeeze(-1).tolist()
    queries = tasks.query_x.squeeze(-1).tolist()
    with served() as server, Client(server.url, api_key=server.headers.get("X-API-Key")) as client:
        wire, sessions = Wire(server), []

        def adapt(i: int) -> None:
            body = {"model": MODEL, "support": {"x": xs[i], "y": ys[i]}}
            sessions.append(wire.post("/adapt", body)["session_id"])

        endpoints: dict[str, Callable[[int], object]] = {
            "/adapt": adapt,
            "/predict (session)": lambda i: wire.post(
                "/predict", {"session_id": sessions[-1], "x": queries[i]}
            ),
            "/predict (model)": lambda i: wire.post("/predict", {"model": MODEL, "x": queries[i]}),
            "/adapt (app.client)": lambda i: client.adapt(xs[i], ys[i], model=MODEL),
        }
        ms = {name: timed(call, warmup, calls) for name, call in endpoints.items()}
    return ms


def in_process(tasks: TaskBatch, warmup: int, calls: int) -> tuple[dict[str, list[float]], InnerLoop]:
    """Per-call milliseconds of ``adapt`` with the card's inner loop and of ``learner.predict``, no HTTP."""
    card, learner, params = load_model(ROOT / "models" / MODEL)
    inner = InnerLoop(card["inner"]["steps"], card["inner"]["lr"], card["inner"]["adapts"])
    adapted: list[dict[str, torch.Tensor]] = []

    def predict_call(i: int) -> None:
        with torch.no_grad():
            learner.predict(adapted[-1], tasks.query_x[i])

    adapt_ms = timed(
        lambda i: adapted.append(adapt(learner, params, tasks.support_x[i], tasks.support_y[i], inner)),
        warmup,
        calls,
    )
    return {"adapt": adapt_ms, "predict": timed(predict_call, warmup, calls)}, inner


def run(args: argparse.Namespace) -> dict[str, Any]:
    # The same fresh sinusoids (10 support and 10 query points each) for the server and for the engine.
    tasks = sinusoid_tasks(torch.Generator().manual_seed(0), args.warmup + args.calls, shots=10, queries=10)
    http = over_http(tasks, args.warmup, args.calls)
    engine, inner = in_process(tasks, args.warmup, args.calls)
    pairs = {
        "/adapt": "adapt",
        "/predict (session)": "predict",
        "/predict (model)": "predict",
        "/adapt (app.client)": "adapt",
    }
    rows: list[dict[str, Any]] = []
    for endpoint, work in pairs.items():
        served, alone = summary(http[endpoint]), summary(engine[work])
        overhead = {"overhead_p50": served["p50"] - alone["p50"], "ratio_p50": served["p50"] / alone["p50"]}
        rows.append({"endpoint": endpoint, "http": served, "engine": alone, **overhead})
    p50 = rows[0]["http"]["p50"]
    return {
        "machine": machine(),
        "workload": f"{MODEL}: 10 support points of a fresh sinusoid per /adapt ({inner.steps} inner "
        f"step{'s' if inner.steps != 1 else ''} of lr {inner.lr}, the card's), 10 query points per /predict; "
        f"{args.warmup} warm-up and {args.calls} timed calls each, one client on one keep-alive connection "
        "on loopback (http.client; the last row through metaserve's own httpx client)",
        "rows": rows,
        "target": {"text": TARGET, "p50_adapt_ms": p50, "met": p50 <= TARGET_MS},
    }


def cells(row: dict[str, Any]) -> list[str]:
    """A table row: the call, its HTTP and engine figures, and the overhead and ratio of the p50s."""
    http, engine = ([f"{row[side][k]:.3f}" for k in STATS] for side in ("http", "engine"))
    return [row["endpoint"], *http, *engine, f"{row['overhead_p50']:.3f}", f"{row['ratio_p50']:.1f}x"]


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: machine, workload, one row per call, and the target met or not."""
    info, target = report["machine"], report["target"]
    header = ["call", *(f"HTTP {k}" for k in STATS), *(f"engine {k}" for k in STATS), "overhead p50", "ratio"]
    return "\n".join([
        f"# Serving latency, {info['date']}, commit {info['commit']}",
        "",
        f"{info['cpu']}, {info['nproc']} CPUs, torch {info['torch']} ({info['torch_threads']} threads). "
        f"{report['workload']}. Milliseconds; engine: the same work in-process, no HTTP; overhead and ratio "
        "compare the p50s.",
        "",
        *table(header, [cells(r) for r in report["rows"]]),
        "",
        f"Target {target['text']}: {target['p50_adapt_ms']:.3f} ms, "
        f"{'met' if target['met'] else 'not met'}.",
        "",
    ])  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=500, help="timed calls per endpoint")
    ap.add_argument("--warmup", type=int, default=20, help="untimed calls per endpoint first")
    ap.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "serve-cpu", help="writes OUT.{json,md}"
    )
    args = ap.parse_args()
    if args.calls < 2 or args.warmup < 0:
        ap.error("--calls must be >= 2 (for percentiles) and --warmup >= 0")
    run_and_write(args, run, markdown)


if __name__ == "__main__":
    main()
