"""Soak: a real ``metaserve serve`` on loopback, driven for a fixed time by concurrent clients that adapt,
predict and delete sinusoid sessions while a meta-training job runs. Reports the requests, the errors
(anything but a deliberate 429 or 503), the slopes after warm-up of the server's RSS and, on CUDA, of its
device memory (read from its own ``/metrics``), and whether every session
acknowledged and not deleted still predicts exactly as it did. Usage: ``python bench/soak.py --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import machine, run_and_write, table  # noqa: E402
from bench.serve import served  # noqa: E402

QUERY = [i / 4 - 5 for i in range(41)]
"""The query every prediction asks: 41 points over the sinusoid's range."""
TOLERANCE = {"rel_tol": 1e-4, "abs_tol": 1e-5}
"""How close a repeated prediction must be: a batch's stacked matmuls round in the last float32 bits
differently with the batch's size, on CUDA by up to 1.2e-6 near zero (tests/test_batching.py allows
the same relative error), never by more."""
REFUSED = {429, 503}
"""Deliberate refusals (rate limit, backpressure): counted, never errors."""
JOB = {"name": "soak", "family": "sinusoid", "iterations": 1_000_000, "meta_batch": 4, "val_tasks": 20,
       "val_every": 200, "checkpoint_every": 200}  # fmt: skip
"""A job that outlasts any soak; it is cancelled at the end."""


@dataclass
class Tally:
    """What the clients saw: requests, refusals, errors (with a few examples), and each client's sessions
    with the predictions recorded right after they were acknowledged."""

    requests: int = 0
    refused: int = 0
    errors: int = 0
    examples: list[str] = field(default_factory=list)
    sessions: dict[str, list[float]] = field(default_factory=dict)
    deleted: int = 0
    checked: int = 0
    rounded: int = 0
    """Repeated predictions that matched within ``TOLERANCE`` but not bit for bit."""

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.examples) < 10:
            self.examples.append(what)

    def compare(self, session_id: str, predictions: list[float]) -> bool:
        """Whether ``predictions`` repeat the recorded ones within ``TOLERANCE``; an error if not."""
        recorded = self.sessions[session_id]
        self.checked += 1
        if predictions == recorded:
            return True
        if all(math.isclose(a, b, **TOLERANCE) for a, b in zip(predictions, recorded, strict=True)):
            self.rounded += 1
            return True
        worst = max(abs(a - b) for a, b in zip(predictions, recorded, strict=True))
        self.error(f"session {session_id} predicted differently (by up to {worst:.3g})")
        return False


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MB: psutil when installed, else /proc/<pid>/status."""
    try:
        import psutil

        return float(psutil.Process(pid).memory_info().rss) / 2**20
    except ImportError:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return float(line.split()[1]) / 1024
        raise RuntimeError(f"no VmRSS for process {pid}") from None


SERIES = {"device": "metaserve_device_memory_allocated_bytes", "cached": "metaserve_session_cache_bytes"}
"""The series of ``/metrics`` read at each sample: the CUDA memory the server's tensors hold (absent on a
CPU), and the bytes of adapted tensors its session cache holds (live sessions, not a leak)."""


async def scraped_mb(http: httpx.AsyncClient) -> dict[str, float]:
    """Each of ``SERIES`` that the server's ``/metrics`` has, summed over its labels, in MB."""
    response = await http.get("/metrics")
    response.raise_for_status()
    found: dict[str, float] = {}
    names = {name: key for key, name in SERIES.items()}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name in names:
                key = names[sample.name]
                found[key] = found.get(key, 0.0) + sample.value / 2**20
    return found


def slope_mb_per_min(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) samples, in MB per minute; 0 with fewer than two samples."""
    if len(samples) < 2:
        return 0.0
    ts, ms = [t for t, _ in samples], [m for _, m in samples]
    t_mean, m_mean = sum(ts) / len(ts), sum(ms) / len(ms)
    spread = sum((t - t_mean) ** 2 for t in ts)
    return 0.0 if spread == 0 else 60 * sum((t - t_mean) * (m - m_mean) for t, m in samples) / spread


def support(rng: random.Random) -> dict[str, Any]:
    """A 10-point sinusoid support set, Finn et al.'s distribution."""
    amplitude, phase = rng.uniform(0.1, 5), rng.uniform(0, math.pi)
    xs = [rng.uniform(-5, 5) for _ in range(10)]
    return {"x": xs, "y": [amplitude * math.sin(x - phase) for x in xs]}


async def call(http: httpx.AsyncClient, tally: Tally, method: str, path: str, body: Any = None) -> Any:
    """One request: its JSON on success (True for a 204), None when refused or failed (tallied)."""
    tally.requests += 1
    try:
        response = await http.request(method, path, json=body)
    except httpx.HTTPError as error:
        tally.error(f"{method} {path}: {type(error).__name__} {error}")
        return None
    if response.status_code in REFUSED:
        tally.refused += 1
        return None
    if not response.is_success:
        tally.error(f"{method} {path}: {response.status_code} {response.text[:200]}")
        return None
    return True if response.status_code == 204 else response.json()


async def client(http: httpx.AsyncClient, tally: Tally, seed: int, deadline: float) -> None:
    """One client until ``deadline``: adapts (then records its prediction), predicts its own sessions and
    checks them against the record, and deletes some; owning its sessions, it never races another."""
    rng, mine = random.Random(seed), list[str]()
    while time.monotonic() < deadline:
        action = rng.choices(("adapt", "predict", "delete"), weights=(4, 5, 1))[0] if mine else "adapt"
        if action == "adapt":
            body = {"model": "sinusoid", "support": support(rng)}
            session = await call(http, tally, "POST", "/adapt", body)
            answer = session and await call(
                http, tally, "POST", "/predict", {"session_id": session["session_id"], "x": QUERY}
            )
            if answer:
                tally.sessions[session["session_id"]] = answer["predictions"]
                mine.append(session["session_id"])
        elif action == "predict":
            session_id = rng.choice(mine)
            answer = await call(http, tally, "POST", "/predict", {"session_id": session_id, "x": QUERY})
            if answer:
                tally.compare(session_id, answer["predictions"])
        else:
            session_id = mine.pop(rng.randrange(len(mine)))
            del tally.sessions[session_id]
            tally.deleted += 1
            await call(http, tally, "DELETE", f"/sessions/{session_id}")


async def sample_memory(
    http: httpx.AsyncClient,
    pid: int,
    deadline: float,
    every: float,
    samples: dict[str, list[tuple[float, float]]],
) -> None:
    """Every ``every`` seconds until ``deadline``: the server's RSS, that RSS less its session cache (what
    would grow with a leak), and on CUDA its device memory, in MB."""
    start = time.monotonic()
    while time.monotonic() < deadline:
        now, scraped, rss = time.monotonic() - start, await scraped_mb(http), rss_mb(pid)
        samples["rss"].append((now, rss))
        samples["rss_less_cache"].append((now, rss - scraped.get("cached", 0.0)))
        if "device" in scraped:
            samples["device"].append((now, scraped["device"]))
        await asyncio.sleep(every)


def summary(samples: list[tuple[float, float]], warmup: float) -> dict[str, float] | None:
    """First, last and largest sample, and the slope after ``warmup`` seconds; None without samples."""
    if not samples:
        return None
    warm = [(t, m) for t, m in samples if t >= warmup]
    values = [m for _, m in samples]
    return {
        "first": values[0],
        "last": values[-1],
        "max": max(values),
        "slope_mb_per_min": slope_mb_per_min(warm),
    }


async def drive(url: str, headers: dict[str, str], pid: int, args: argparse.Namespace) -> dict[str, Any]:
    """The soak itself: the job, the clients and the memory samples, then every kept session checked."""
    tally: Tally = Tally()
    samples: dict[str, list[tuple[float, float]]] = {"rss": [], "rss_less_cache": [], "device": []}
    limits = httpx.Limits(max_connections=args.clients)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60, limits=limits) as http:
        job = await call(http, tally, "POST", "/jobs", JOB)
        deadline = time.monotonic() + args.seconds
        await asyncio.gather(
            sample_memory(http, pid, deadline, args.sample_seconds, samples),
            *(client(http, tally, seed, deadline) for seed in range(args.clients)),
        )
        trained = job and await call(http, tally, "GET", f"/jobs/{job['job_id']}")
        if job:
            await call(http, tally, "POST", f"/jobs/{job['job_id']}/cancel")
        kept, served = dict(tally.sessions), 0
        for session_id in kept:
            answer = await call(http, tally, "POST", "/predict", {"session_id": session_id, "x": QUERY})
            served += bool(answer and tally.compare(session_id, answer["predictions"]))
    return {
        "machine": machine(),
        "seconds": args.seconds,
        "clients": args.clients,
        "requests": tally.requests,
        "refused": tally.refused,
        "errors": tally.errors,
        "error_examples": tally.examples,
        "sessions_kept": len(kept),
        "sessions_served": served,
        "sessions_deleted": tally.deleted,
        "predictions_checked": tally.checked,
        "predictions_rounded": tally.rounded,
        "job": {"state": trained["state"], "iteration": trained["iteration"]} if trained else None,
        "rss_mb": summary(samples["rss"], args.warmup_seconds),
        "rss_less_cache_mb": summary(samples["rss_less_cache"], args.warmup_seconds),
        "device_mb": summary(samples["device"], args.warmup_seconds),
        "warmup_seconds": args.warmup_seconds,
        "samples": samples,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="metaserve-soak-") as data_dir,
        served(Path(data_dir), device=args.device) as server,
    ):
        return asyncio.run(drive(server.url, server.headers, server.process.pid, args))


def markdown(report: dict[str, Any]) -> str:
    info, rss, device, job = report["machine"], report["rss_mb"], report["device_mb"], report["job"] or {}
    warmup = f"after {report['warmup_seconds']:g} s"
    rows = [
        ["duration", f"{report['seconds']:g} s, {report['clients']} clients"],
        ["requests", f"{report['requests']:,} ({report['requests'] / report['seconds']:.0f}/s)"],
        ["errors (not 429/503)", str(report["errors"])],
        ["refused (429/503)", str(report["refused"])],
        ["sessions kept / served at the end", f"{report['sessions_kept']:,} / {report['sessions_served']:,}"],
        ["sessions deleted", f"{report['sessions_deleted']:,}"],
        [
            "repeated predictions checked / off in the last bit",
            f"{report['predictions_checked']:,} / {report['predictions_rounded']:,}",
        ],
        ["training job at the end", f"{job.get('state', 'none')}, iteration {job.get('iteration', 0)}"],
        ["server RSS first / last / max", f"{rss['first']:.0f} / {rss['last']:.0f} / {rss['max']:.0f} MB"],
        [f"RSS slope {warmup}", f"{rss['slope_mb_per_min']:+.2f} MB/min"],
        [
            f"RSS less the session cache's bytes, slope {warmup}",
            f"{report['rss_less_cache_mb']['slope_mb_per_min']:+.2f} MB/min",
        ],
        [
            "device memory first / last / max",
            f"{device['first']:.0f} / {device['last']:.0f} / {device['max']:.0f} MB"
            if device
            else "none (CPU)",
        ],
        [
            f"device memory slope {warmup}",
            f"{device['slope_mb_per_min']:+.2f} MB/min" if device else "none (CPU)",
        ],
    ]
    return "\n".join([
        f"# Soak, {info['date']}, commit {info['commit']}",
        "",
        f"{info['cpu']}, {info['nproc']} cores. One `metaserve serve` on loopback; {report['clients']} "
        "clients adapt 10-point sinusoids, predict 41 points with their own sessions (each answer checked "
        "against the one recorded when the session was acknowledged) and delete some, while a sinusoid "
        "meta-training job runs. At the end every session kept is predicted once more.",
        "",
        *table(["figure", "value"], rows),
        "",
    ])  # fmt: skip


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=120, help="how long the clients run")
    ap.add_argument("--clients", type=int, default=64, help="concurrent clients")
    ap.add_argument("--device", default="auto", help="the server's METASERVE_DEVICE: auto, cpu or cuda")
    ap.add_argument("--warmup-seconds", type=float, default=30, help="samples before this are left out")
    ap.add_argument("--sample-seconds", type=float, default=1, help="memory sampling interval")
    ap.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "soak-cpu", help="writes OUT.{json,md}"
    )
    return ap


def main() -> None:
    run_and_write(parser().parse_args(), run, markdown)


if __name__ == "__main__":
    main()
